"""TraceMind: flows, a durable shared-directory task queue, and the daemon that runs them.

The public API is what ``__all__`` lists (a test pins it): :class:`Client` to enqueue, inspect
and wait on tasks from Python, what it returns, and the errors it raises. Names are imported on
first use (PEP 562), so ``import tracemind`` stays as cheap as ``tm enqueue`` needs it to be.
See docs/python-api.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tracemind.client.api import Client
    from tracemind.client.tasks import QueueCounts, TaskInfo
    from tracemind.errors import (
        DisabledError,
        FlowError,
        LockTimeout,
        NotFound,
        QueueError,
        StepFailed,
        TraceMindError,
        UsageError,
        WaitTimeout,
    )
    from tracemind.queue.protocol import TaskStatus

__all__ = [
    "Client",
    "DisabledError",
    "FlowError",
    "LockTimeout",
    "NotFound",
    "QueueCounts",
    "QueueError",
    "StepFailed",
    "TaskInfo",
    "TaskStatus",
    "TraceMindError",
    "UsageError",
    "WaitTimeout",
    "__version__",
]

_MODULE_OF = {
    "Client": "tracemind.client.api",
    "QueueCounts": "tracemind.client.tasks",
    "TaskInfo": "tracemind.client.tasks",
    "TaskStatus": "tracemind.queue.protocol",
    **dict.fromkeys(
        (
            "DisabledError",
            "FlowError",
            "LockTimeout",
            "NotFound",
            "QueueError",
            "StepFailed",
            "TraceMindError",
            "UsageError",
            "WaitTimeout",
        ),
        "tracemind.errors",
    ),
}

if not TYPE_CHECKING:  # the type checker sees the imports above instead

    def __getattr__(name: str) -> object:
        """Import the module that defines ``name`` on first use (PEP 562)."""
        import importlib

        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
