"""The validated shape of triggers.yaml, the events triggers emit, and the trigger errors.

Everything here is plain data: :mod:`tracemind.triggers.config` builds these objects, the trigger
kinds consume them. Times are timezone-aware UTC datetimes in memory and ISO-8601 UTC with ``Z``
wherever they leave the process (task metadata, state files, ``ps``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from tracemind.errors import TraceMindError, UsageError

if TYPE_CHECKING:
    from tracemind.triggers.cron import Schedule

TriggerKind = Literal["cron", "filesystem", "webhook"]
KINDS: tuple[TriggerKind, ...] = ("cron", "filesystem", "webhook")

DEFAULT_INTERVAL_S = 5.0
MIN_INTERVAL_S = 0.5
DEFAULT_BIND_HOST = "127.0.0.1"
DEFAULT_BIND_PORT = 8081
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
SECRET_HEADER = "X-TraceMind-Secret"


class TriggerConfigError(UsageError):
    """triggers.yaml has problems; ``problems`` holds every one, each a line naming the trigger."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        first = problems[0] if problems else "invalid triggers configuration"
        more = len(problems) - 1
        suffix = f" (and {more} more; run `tm triggers validate`)" if more > 0 else ""
        super().__init__(first + suffix)


class TriggerStartError(TraceMindError):
    """A trigger could not start (e.g. a webhook port already in use); exit 1."""


@dataclass(frozen=True)
class TriggerSpec:
    """Keys every trigger has. ``flow`` is resolved against the triggers file's directory."""

    id: str
    flow: Path
    input: dict[str, Any]

    kind: ClassVar[TriggerKind]


@dataclass(frozen=True)
class CronSpec(TriggerSpec):
    """A schedule: 5-field cron, ``@daily``-style macros, or ``@every N{s,m,h}``."""

    cron: str
    timezone: str
    schedule: Schedule
    catch_up: bool = False

    kind: ClassVar[TriggerKind] = "cron"


@dataclass(frozen=True)
class FilesystemSpec(TriggerSpec):
    """A polled directory; files whose name matches ``pattern`` fire once per version."""

    path: Path
    pattern: str = "*"
    recursive: bool = False
    interval_s: float = DEFAULT_INTERVAL_S
    ignore_existing: bool = False

    kind: ClassVar[TriggerKind] = "filesystem"


@dataclass(frozen=True)
class WebhookSpec(TriggerSpec):
    """An HTTP route; ``secret`` is the value of ``secret_env`` read when the config was loaded."""

    route: str
    method: str = "POST"
    bind_host: str = DEFAULT_BIND_HOST
    bind_port: int = DEFAULT_BIND_PORT
    secret_env: str | None = None
    secret: str | None = field(default=None, repr=False)
    allow_unauthenticated: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    kind: ClassVar[TriggerKind] = "webhook"


AnyTriggerSpec = CronSpec | FilesystemSpec | WebhookSpec


@dataclass(frozen=True)
class TriggersConfig:
    """A loaded, validated triggers file (flows not yet loaded: the runner does that)."""

    path: Path
    triggers: tuple[AnyTriggerSpec, ...]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TriggerEvent:
    """One outside event, before its input is rendered.

    ``identity`` names the event within its trigger (the scheduled time, the file version, the
    request's ``Idempotency-Key``); the idempotency key is ``<trigger id>:<identity>``, and there
    is no key at all when ``identity`` is None. ``fields`` are the kind-specific template names.
    """

    trigger_id: str
    kind: TriggerKind
    event_id: str
    time: datetime
    identity: str | None
    fields: dict[str, Any]

    @property
    def idempotency_key(self) -> str | None:
        return None if self.identity is None else f"{self.trigger_id}:{self.identity}"

    def context(self) -> dict[str, Any]:
        """The names input templates render from."""
        base: dict[str, Any] = {
            "trigger_id": self.trigger_id,
            "trigger_kind": self.kind,
            "event_id": self.event_id,
            "timestamp": iso_utc(self.time),
        }
        return {**self.fields, **base}

    def metadata(self) -> dict[str, Any]:
        """The ``_trigger`` record attached to the task."""
        return {
            "trigger_id": self.trigger_id,
            "kind": self.kind,
            "event_id": self.event_id,
            "time": iso_utc(self.time),
            "key": self.idempotency_key,
        }


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix; raises ValueError for a naive datetime."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime; pass a timezone-aware one")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso_utc(text: str) -> datetime:
    """Inverse of :func:`iso_utc` (accepts any offset; returns UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone")
    return moment.astimezone(UTC)
