"""The Python client (``tracemind.Client``): enqueue, inspect and wait on tasks.

Imported lazily (PEP 562): ``tm enqueue`` uses :mod:`tracemind.client.inputs` alone, and must not
pay for the rest.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tracemind.client.api import Client
    from tracemind.client.tasks import QueueCounts, TaskInfo

__all__ = ["Client", "QueueCounts", "TaskInfo"]

_MODULE_OF = {"Client": "api", "QueueCounts": "tasks", "TaskInfo": "tasks"}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """Import the module that defines ``name`` on first use."""
        import importlib

        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
