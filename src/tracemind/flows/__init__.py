"""Flows: the model, loading + validation, snapshots and the synchronous runner.

Pure: no queue, no processes, no logging configuration. Importing this package pulls in only
the standard library (``yaml`` is imported when a YAML file is parsed).
"""

from tracemind.flows.hooks import Hook, import_hook
from tracemind.flows.loader import load_flow
from tracemind.flows.model import Edge, Flow, RetryPolicy, Step, StepKind
from tracemind.flows.runner import run_flow
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
]
