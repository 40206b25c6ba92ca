"""One-step flows: "run this function in the background" without a flow file.

``tm enqueue --step mypkg.jobs.resize`` and ``Client.enqueue_step`` wrap a hook in a flow of
two steps, ``run`` (a task calling the hook) then ``end`` (a finish), with the default retry
policy. The flow's id is the hook spec, so ``tm task show`` and the DLQ say what ran.
"""

from __future__ import annotations

import hashlib
import json

from tracemind.flows.snapshot import FlowSnapshot
from tracemind.flows.validation import parse_flow


def step_document(hook: str) -> dict[str, object]:
    """The flow document (``{"flow": …}``) of the one-step flow around ``hook``."""
    return {
        "flow": {
            "id": hook,
            "entry": "run",
            "steps": [
                {"id": "run", "kind": "task", "hooks": {"run": hook}},
                {"id": "end", "kind": "finish"},
            ],
            "edges": [{"from": "run", "to": "end"}],
        }
    }


def step_flow(hook: str, *, check_hooks: bool = True) -> FlowSnapshot:
    """The snapshot of the one-step flow around ``hook`` (``pkg.module.func`` or
    ``pkg.module:func``). With ``check_hooks`` the hook is imported now, in this process; a
    malformed or unimportable hook raises :class:`~tracemind.errors.FlowError` naming it."""
    document = step_document(hook)
    source = f"<step {hook}>"
    flow = parse_flow(document, source, check_hooks=check_hooks)
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    return FlowSnapshot.of(flow, source, digest)
