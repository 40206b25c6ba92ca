"""Run every trigger of a config in background threads, submitting through one Submitter.

Contract:

- :meth:`TriggerRunner.start` loads each trigger's flow (a FlowError — exit 2 — and nothing has
  started), binds every webhook port (a port in use raises :class:`TriggerStartError` naming it,
  exit 1, and nothing is left running), then starts one thread per cron or filesystem trigger and
  one per webhook host:port, and returns only when all of them are running.
- :meth:`TriggerRunner.stop` stops the threads and closes the ports; safe to call twice.
- :meth:`TriggerRunner.stats` returns the ``ps`` entries in config order: ``id``, ``kind``,
  ``last_fire``, ``next_fire`` (ISO-8601 UTC with ``Z`` or None), ``enqueued``, ``deduplicated``,
  ``failed``, ``last_error``.
- Triggers only enqueue; workers run the tasks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from tracemind.clock import Clock, system_clock
from tracemind.triggers.cron_trigger import CronTrigger
from tracemind.triggers.dispatch import (
    Dispatcher,
    SerializedSubmitter,
    Submitter,
    TriggerStats,
)
from tracemind.triggers.fs_trigger import FilesystemTrigger
from tracemind.triggers.model import (
    CronSpec,
    FilesystemSpec,
    TriggerEvent,
    TriggersConfig,
    TriggerStartError,
    WebhookSpec,
)
from tracemind.triggers.state import TriggerStateStore
from tracemind.triggers.webhook import WebhookEndpoint, WebhookServer

log = structlog.get_logger("tracemind.triggers")
FlowLoader = Callable[[Path], Any]
_MAX_WAIT_S = 5.0  # re-read the wall clock at least this often (it can jump)


def default_flow_loader(path: Path) -> Any:
    """``tracemind.flows.load_flow`` (imported only when triggers start)."""
    from tracemind.flows import load_flow

    return load_flow(path)


class TriggerRunner:
    """Starts, stops and reports every trigger of ``config``; see the module docstring."""

    def __init__(
        self,
        config: TriggersConfig,
        submitter: Submitter,
        *,
        state_dir: Path,
        flow_loader: FlowLoader | None = None,
        clock: Clock = system_clock,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self.submitter = SerializedSubmitter(submitter)
        self.store = TriggerStateStore(Path(state_dir))
        self.flow_loader = flow_loader or default_flow_loader
        self.clock = clock
        self.start_timeout_s = start_timeout_s
        self._stats = {spec.id: TriggerStats() for spec in config.triggers}
        self._cron: dict[str, CronTrigger] = {}
        self._servers: list[WebhookServer] = []
        self._threads: list[threading.Thread] = []
        self._serving: set[int] = set()  # servers whose serve_forever thread was started
        self._stop = threading.Event()
        self._started = False

    def start(self) -> None:
        """Start everything; returns once all triggers run (see the module docstring)."""
        if self._started:
            raise RuntimeError("TriggerRunner.start() called twice")
        dispatchers = self._dispatchers()
        self._servers = self._bind(dispatchers)
        self._started = True
        try:
            ready = self._launch(dispatchers)
            for event in ready:
                if not event.wait(self.start_timeout_s):
                    raise TriggerStartError(
                        f"triggers did not start within {self.start_timeout_s}s"
                    )
        except BaseException:
            self.stop()
            raise
        log.info("triggers started", count=len(self.config.triggers), config=str(self.config.path))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop all threads and close the webhook ports; waits up to ``timeout_s`` per thread."""
        self._stop.set()
        for server in self._servers:
            if id(server) in self._serving:
                server.shutdown()  # waits for serve_forever, so only once its thread started
            server.server_close()
        for thread in self._threads:
            thread.join(timeout_s)
        if self._started:
            log.info("triggers stopped")
        self._servers = []
        self._serving.clear()
        self._threads = []

    def stats(self) -> list[dict[str, Any]]:
        """One ``ps`` entry per trigger, in config order."""
        entries = []
        for spec in self.config.triggers:
            cron = self._cron.get(spec.id)
            next_fire = cron.next_fire if cron is not None else None
            entries.append(self._stats[spec.id].snapshot(spec, next_fire))
        return entries

    def webhook_addresses(self) -> dict[str, tuple[str, int]]:
        """The bound (host, port) of each webhook trigger (useful with ``bind_port: 0``)."""
        addresses = {}
        for server in self._servers:
            host, port = str(server.server_address[0]), server.port
            for endpoint in server.endpoints.values():
                addresses[endpoint.spec.id] = (host, port)
        return addresses

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def __enter__(self) -> TriggerRunner:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _launch(self, dispatchers: dict[str, Dispatcher]) -> list[threading.Event]:
        ready: list[threading.Event] = []
        now = self._now()
        for spec in self.config.triggers:
            dispatcher = dispatchers[spec.id]
            if isinstance(spec, CronSpec):
                cron = CronTrigger(spec, dispatcher, self.store)
                self._cron[spec.id] = cron
                catch_up = cron.start(now)
                ready.append(self._thread(f"cron-{spec.id}", self._run_cron, cron, catch_up))
            elif isinstance(spec, FilesystemSpec):
                watcher = FilesystemTrigger(spec, dispatcher, self.store)
                ready.append(self._thread(f"fs-{spec.id}", self._run_filesystem, watcher))
        for server in self._servers:
            ready.append(self._thread(f"webhook-{server.port}", self._serve, server))
            self._serving.add(id(server))
        return ready

    def _dispatchers(self) -> dict[str, Dispatcher]:
        flows: dict[Path, Any] = {}
        dispatchers = {}
        for spec in self.config.triggers:
            if spec.flow not in flows:
                flows[spec.flow] = self.flow_loader(spec.flow)  # FlowError: nothing started yet
            dispatchers[spec.id] = Dispatcher(
                spec, flows[spec.flow], self.submitter, self._stats[spec.id]
            )
        return dispatchers

    def _bind(self, dispatchers: dict[str, Dispatcher]) -> list[WebhookServer]:
        groups: dict[tuple[str, int], dict[str, WebhookEndpoint]] = {}
        for spec in self.config.triggers:
            if isinstance(spec, WebhookSpec):
                endpoint = WebhookEndpoint(spec, dispatchers[spec.id], self._now)
                groups.setdefault((spec.bind_host, spec.bind_port), {})[spec.route] = endpoint
        servers: list[WebhookServer] = []
        for (host, port), endpoints in groups.items():
            try:
                servers.append(WebhookServer(host, port, endpoints))
            except OSError as error:
                for server in servers:
                    server.server_close()
                ids = ", ".join(sorted(e.spec.id for e in endpoints.values()))
                reason = error.strerror or str(error)
                raise TriggerStartError(
                    f"webhook {ids}: cannot listen on {host}:{port}: {reason}"
                ) from error
        return servers

    def _thread(self, name: str, target: Callable[..., None], *args: Any) -> threading.Event:
        ready = threading.Event()
        thread = threading.Thread(
            target=target, args=(ready, *args), name=f"tm-trigger-{name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()
        return ready

    def _run_cron(
        self, ready: threading.Event, cron: CronTrigger, catch_up: list[TriggerEvent]
    ) -> None:
        ready.set()
        for event in catch_up:
            cron.fire(event)
        while not self._stop.is_set():
            self._guarded(cron.spec.id, cron.step)
            next_fire = cron.next_fire
            delay_s = _MAX_WAIT_S
            if next_fire is not None:
                delay_s = min(max((next_fire - self._now()).total_seconds(), 0.0), _MAX_WAIT_S)
            self._stop.wait(delay_s)

    def _run_filesystem(self, ready: threading.Event, watcher: FilesystemTrigger) -> None:
        self._guarded(watcher.spec.id, watcher.start)
        ready.set()
        while not self._stop.is_set():
            self._guarded(watcher.spec.id, watcher.step)
            self._stop.wait(watcher.spec.interval_s)

    def _serve(self, ready: threading.Event, server: WebhookServer) -> None:
        ready.set()  # the socket already listens: requests queue until the loop runs
        server.serve_forever(poll_interval=0.2)

    def _guarded(self, trigger_id: str, step: Callable[[datetime], object]) -> None:
        try:
            step(self._now())
        except Exception as error:  # a bug in one step must not end the trigger; logged in full
            self._stats[trigger_id].error(f"{type(error).__name__}: {error}")
            log.exception("trigger step crashed", trigger_id=trigger_id)
