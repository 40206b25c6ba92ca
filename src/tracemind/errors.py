"""The error root and the few subclasses the CLI maps to exit codes.

Every error a user can cause derives from :class:`TraceMindError`; its ``exit_code`` is what the
CLI exits with, and ``str(error)`` is the one line it prints. Anything else escaping to the CLI is
a bug and is shown with its traceback.
"""

from __future__ import annotations


class TraceMindError(Exception):
    """A failure a user can act on: printed as one line, exits with ``exit_code``."""

    exit_code = 1


class UsageError(TraceMindError):
    """Bad input: malformed JSON, a missing file, an invalid flag value."""

    exit_code = 2


class FlowError(UsageError):
    """A flow that cannot be loaded or fails validation (names the file and, when known, the step)."""

    def __init__(self, path: str, message: str, step: str | None = None) -> None:
        self.path = path
        self.step = step
        self.message = message
        where = f"{path}: step {step!r}" if step else path
        super().__init__(f"{where}: {message}")


class StepFailed(TraceMindError):
    """A step's hook raised while a flow ran; carries the step id and the formatted traceback."""

    def __init__(self, step: str, error: BaseException, traceback_text: str) -> None:
        self.step = step
        self.error = error
        self.traceback_text = traceback_text
        super().__init__(f"step {step!r} failed: {type(error).__name__}: {error}")


class DisabledError(TraceMindError):
    """A feature flag that gates the command is not set."""


class LockTimeout(TraceMindError):
    """A cross-process lock was not acquired in time (another process holds it, or is paused)."""


class QueueError(TraceMindError):
    """The queue directory cannot be used (unwritable, not a directory, ...)."""


class NotFound(TraceMindError):
    """A task, DLQ entry or daemon that the command names does not exist."""
