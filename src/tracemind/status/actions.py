"""The dashboard's actions: requeue or purge a dead letter, cancel a waiting task. The only code
of the status server that changes the queue; each action is one call into the highest-level
API there is for it (the backend's dead letters, :class:`tracemind.client.Client`).

Contract: an action returns an :class:`ActionResult` (HTTP status and a short message) and
never raises for a missing or finished task; every attempt is logged on the
``tracemind.status.actions`` logger with who asked (``remote`` address and ``token``
fingerprint), what (``action``) and ``task_id`` — whether it was done or not.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from tracemind import config
from tracemind.backend.location import Location
from tracemind.errors import NotFound, TraceMindError
from tracemind.queue.names import is_task_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tracemind.backend.protocol import DeadLetters

log = logging.getLogger("tracemind.status.actions")

ACTIONS = ("requeue", "purge", "cancel")


@dataclass(frozen=True)
class ActionResult:
    status: int
    """The HTTP status: 200 done, 400 not a task id, 404 no such task, 409 nothing to do."""
    message: str
    done: bool

    def to_dict(self, action: str, task_id: str) -> dict[str, Any]:
        return {"action": action, "task_id": task_id, "done": self.done, "message": self.message}


def fingerprint(token: str) -> str:
    """A short, stable name for a token in the log (never the token itself)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class Actions:
    """Runs the dashboard's actions on the queue at ``location``."""

    def __init__(self, location: Location) -> None:
        self.location = location

    def run(self, action: str, task_id: str, *, remote: str, token: str) -> ActionResult:
        """Run ``action`` (one of :data:`ACTIONS`) on ``task_id`` and log it."""
        if not is_task_id(task_id):
            result = ActionResult(400, "not a task id (expected 22 hex digits)", False)
        elif action == "requeue":
            result = self._requeue(task_id)
        elif action == "purge":
            result = self._purge(task_id)
        elif action == "cancel":
            result = self._cancel(task_id)
        else:
            result = ActionResult(404, f"no action {action!r}", False)
        log.info(
            "dashboard action",
            extra={
                "action": action,
                "task_id": task_id if is_task_id(task_id) else None,
                "remote": remote,
                "token": fingerprint(token),
                "done": result.done,
                "http_status": result.status,
                "outcome": result.message,
            },
        )
        return result

    def _dead_letters(self) -> DeadLetters:
        from tracemind.backend import open_backend

        return open_backend(self.location, durable=config.durable()).dead_letters

    def _requeue(self, task_id: str) -> ActionResult:
        if self._dead_letters().requeue(task_id):
            return ActionResult(200, "requeued", True)
        return ActionResult(404, "no such dead letter", False)

    def _purge(self, task_id: str) -> ActionResult:
        if self._dead_letters().purge(task_id):
            return ActionResult(200, "purged", True)
        return ActionResult(404, "no such dead letter", False)

    def _cancel(self, task_id: str) -> ActionResult:
        from tracemind.client import Client

        try:
            waiting = Client(self.location).cancel(task_id)
        except NotFound:
            return ActionResult(404, "no such task", False)
        except TraceMindError as exc:  # finished: nothing to cancel
            return ActionResult(409, str(exc), False)
        if waiting:
            return ActionResult(200, "cancelled", True)
        return ActionResult(200, "cancel requested: it stops before its next step", True)
