"""Flows: the model, loading + validation, snapshots and the synchronous runner.

Pure: no queue, no processes, no logging configuration. Importing this package pulls in only
the standard library (``yaml`` is imported when a YAML file is parsed), and only when a name is
first used: ``tm enqueue`` reads a cached snapshot (:mod:`tracemind.flows.cache`) without
loading the validator, the model or the runner.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tracemind.flows.hooks import Hook, import_hook
    from tracemind.flows.loader import load_flow
    from tracemind.flows.model import Edge, Flow, RetryPolicy, Step, StepKind
    from tracemind.flows.runner import run_flow
    from tracemind.flows.single import step_flow
    from tracemind.flows.snapshot import FlowSnapshot
    from tracemind.flows.validation import parse_flow

__all__ = [
    "Edge",
    "Flow",
    "FlowSnapshot",
    "Hook",
    "RetryPolicy",
    "Step",
    "StepKind",
    "import_hook",
    "load_flow",
    "parse_flow",
    "run_flow",
    "step_flow",
]

_MODULE_OF = {
    "Edge": "model",
    "Flow": "model",
    "FlowSnapshot": "snapshot",
    "Hook": "hooks",
    "RetryPolicy": "model",
    "Step": "model",
    "StepKind": "model",
    "import_hook": "hooks",
    "load_flow": "loader",
    "parse_flow": "validation",
    "run_flow": "runner",
    "step_flow": "single",
}

if not TYPE_CHECKING:  # the type checker sees the imports above instead

    def __getattr__(name: str) -> object:
        """Import the module that defines ``name`` on first use (PEP 562)."""
        import importlib

        module = _MODULE_OF.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
