"""The error root and the few subclasses the CLI maps to exit codes.

Every error a user can cause derives from :class:`TraceMindError`; its ``exit_code`` is what the
CLI exits with, and ``str(error)`` is the one line it prints (``tm: error: <line>`` on stderr, or
``{"error": "<line>", "exit": <code>}`` on stdout with ``--json``). The Python client
(:class:`tracemind.Client`) raises the same classes. Anything else escaping to the CLI is a bug
and is shown with its traceback.

The hierarchy (exit code in brackets)::

    TraceMindError [1]        a failure the user can act on
    ├── UsageError [2]        bad input: malformed JSON, a missing file, an invalid flag value
    │   └── FlowError [2]     a flow that cannot be loaded or is invalid (names file and step)
    ├── StepFailed [1]        a step's hook raised during a synchronous run (``tm run``)
    ├── DisabledError [1]     a feature flag the command needs is not set
    ├── LockTimeout [1]       a cross-process lock was not acquired in time
    ├── QueueError [1]        a data directory cannot be used (unwritable, not a directory…)
    ├── NotFound [1]          a task, DLQ entry or daemon the command names does not exist
    ├── Cancelled [1]         a task was cancelled (raised between steps, where it stops)
    └── WaitTimeout [3]       tasks waited on were not all finished in time

A few modules add subclasses of these for their own failures (``LeaseLost``, ``StartFailed``,
``TriggerConfigError``…); they keep their base's exit code.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class TraceMindError(Exception):
    """A failure a user can act on: printed as one line, exits with ``exit_code``."""

    exit_code = 1

    def to_dict(self) -> dict[str, object]:
        """What ``tm … --json`` prints on stdout for this error."""
        return {"error": str(self), "exit": self.exit_code}


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


class QueueUnavailable(QueueError):
    """The queue's server cannot be reached for now (refused, closed, timed out, loading):
    a CLI verb reports it and exits 1; a long-lived process (daemon, worker) waits and retries,
    since it may come back by itself."""


class NotFound(TraceMindError):
    """A task, DLQ entry or daemon that the command names does not exist."""


class Cancelled(TraceMindError):
    """A task's cancellation was requested; the flow stops before its next step."""


class WaitTimeout(TraceMindError):
    """Waiting for tasks gave up before all of them finished; ``unfinished`` lists their ids."""

    exit_code = 3

    def __init__(self, unfinished: Sequence[str], timeout_s: float) -> None:
        self.unfinished = list(unfinished)
        self.timeout_s = timeout_s
        first = ", ".join(self.unfinished[:3]) + (" …" if len(self.unfinished) > 3 else "")
        super().__init__(
            f"{len(self.unfinished)} task(s) not finished after {timeout_s:g} s: {first}"
        )
