"""The Python client: :class:`Client`, the public way to enqueue, inspect and wait on tasks.

It is a thin layer over the same backend (:mod:`tracemind.backend`) and submitter as ``tm``: a
task enqueued here is the same task ``tm enqueue`` makes, errors are the same
:mod:`tracemind.errors` classes behind the CLI's one-line messages, and every method reads or
writes the location directly (no daemon needs to run for ``enqueue``, ``get``, ``stats`` or
``run``; only for tasks to finish).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tracemind import config
from tracemind.backend.location import Location, data_location
from tracemind.client.inputs import check_input, check_key, due_time, key_from_field
from tracemind.client.tasks import QueueCounts, TaskInfo
from tracemind.clock import Clock, system_clock
from tracemind.errors import NotFound, TraceMindError, UsageError, WaitTimeout
from tracemind.queue.protocol import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from datetime import datetime

    from tracemind.backend.protocol import Backend, Submitter
    from tracemind.flows import Flow, FlowSnapshot
    from tracemind.flows.cache import CachedFlow
    from tracemind.submit import Submission

    FlowLike = str | os.PathLike[str] | FlowSnapshot | Flow
    LocationLike = str | os.PathLike[str] | Location | None


class Client:
    """Enqueue flows, look tasks up and wait for them, on one *location*.

    ``Client()`` resolves its location as ``tm`` does without flags: ``TM_QUEUE_URL``, else
    ``$TM_DATA_DIR``, else ``data`` under the current directory (``TM_QUEUE_DIR``,
    ``TM_IDEMPOTENCY_DIR`` and ``TM_DLQ_DIR`` set a file location's directories apart).
    ``Client("/srv/tm")`` uses the data root ``/srv/tm`` (``queue/``, ``idempotency/``,
    ``dlq/`` under it); ``Client("file:///srv/tm")`` or any location URL
    (:class:`~tracemind.backend.location.Location`) names it as ``--queue-url`` does.
    ``TM_FILE_QUEUE_V2`` (power-loss durability) and ``TM_IDEMPOTENCY_TTL_S`` are read from
    the environment as ``tm`` reads them.

    ``app_dirs`` (else ``TM_APP_DIR``) go first on this process's ``sys.path``: the client
    validates a flow by importing its hooks here, as ``tm enqueue --app-dir`` does. The workers
    import them too, from their own app dirs (``tm daemon start --app-dir``).

    Durability: when ``enqueue`` or ``enqueue_many`` returns, the tasks are in the queue and
    survive this process being killed; with ``TM_FILE_QUEUE_V2=1`` also a power loss. Readers
    (``get``, ``wait``, ``stats``) never create or change a file.

    A client is cheap to make and is not shared between threads (make one per thread). Each
    method is one call into the stores, so a new verb of the queue is one method here.
    """

    def __init__(
        self,
        location: LocationLike = None,
        *,
        app_dirs: Sequence[str | os.PathLike[str]] = (),
        clock: Clock = system_clock,
        env: Mapping[str, str] | None = None,
    ) -> None:
        from tracemind.backend import open_backend
        from tracemind.flows.hooks import add_to_import_path

        self._env: Mapping[str, str] = os.environ if env is None else env
        self.location = _location(location, self._env)
        """Where this client reads and writes (:class:`~tracemind.backend.location.Location`)."""
        self.app_dirs = config.app_dirs([os.fspath(d) for d in app_dirs], self._env)
        add_to_import_path(self.app_dirs)
        self._clock = clock
        self._backend: Backend = open_backend(
            self.location, durable=config.durable(self._env), env=self._env, clock=clock
        )
        self._submitter: Submitter | None = None

    def __repr__(self) -> str:
        return f"Client({self.location.redacted()!r})"

    # -- submitting ------------------------------------------------------------------------------

    def enqueue(
        self,
        flow: FlowLike,
        input: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        delay_s: float | None = None,
        at: str | float | datetime | None = None,
    ) -> str:
        """Enqueue one task of ``flow`` (a flow file's path, or a loaded
        :class:`~tracemind.flows.FlowSnapshot`) with ``input`` (a JSON object; default ``{}``)
        and return its task id.

        ``key``: an idempotency key; while a task with the same key is pending, delayed, in
        flight or succeeded within ``TM_IDEMPOTENCY_TTL_S``, nothing is enqueued and that task's
        id is returned. ``delay_s`` (seconds) or ``at`` (an ISO-8601 time with a zone, an aware
        datetime or epoch seconds): the task stays ``delayed`` until then.

        The flow is validated first (its hooks imported here); :class:`FlowError` if invalid,
        :class:`UsageError` for a bad input, key or time. Durable when it returns."""
        [task_id] = self._submit(
            flow,
            [self._submission(input, key, delay_s, at, "input")],
        )
        return task_id

    def enqueue_step(
        self,
        hook: str,
        input: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        delay_s: float | None = None,
        at: str | float | datetime | None = None,
    ) -> str:
        """:meth:`enqueue` a one-step flow around ``hook`` (``"mypkg.jobs.resize"``: the
        function ``resize(ctx, state)`` of ``mypkg.jobs``): "run this function in the
        background" without a flow file. The flow's id is ``hook``."""
        from tracemind.flows.single import step_flow

        return self.enqueue(step_flow(hook), input, key=key, delay_s=delay_s, at=at)

    def enqueue_many(
        self,
        flow: FlowLike,
        inputs: Iterable[Mapping[str, Any]],
        *,
        key_field: str | None = None,
        delay_s: float | None = None,
        at: str | float | datetime | None = None,
    ) -> list[str]:
        """Enqueue one task of ``flow`` per input as one durable batch; returns the task ids in
        input order. ``key_field``: each input's idempotency key is its value of that field (a
        string as is, anything else as JSON text); a duplicate returns the existing task's id.
        Every input is checked before anything is enqueued: one bad input enqueues nothing."""
        submissions = []
        for index, item in enumerate(inputs):
            what = f"inputs[{index}]"
            state = check_input(dict(item) if isinstance(item, Mapping) else item, what)
            key = None if key_field is None else key_from_field(state, key_field, what)
            submissions.append(self._submission(state, key, delay_s, at, what))
        if not submissions:
            return []
        return self._submit(flow, submissions)

    def _submission(
        self,
        input: Mapping[str, Any] | None,
        key: str | None,
        delay_s: float | None,
        at: Any,
        what: str,
    ) -> Submission:
        from tracemind.submit import Submission

        state = check_input({} if input is None else _as_dict(input), what)
        if key is not None:
            check_key(key, "key")
        return Submission(state, key, due_s=due_time(self._clock(), delay_s, at))

    def _submit(self, flow: FlowLike, submissions: list[Submission]) -> list[str]:
        snapshot, cached = self._snapshot(flow)
        results = self._queue_submitter().submit_many(snapshot, submissions)
        if cached is not None:
            cached.remember()
        return [result.task_id for result in results]

    def _queue_submitter(self) -> Submitter:
        if self._submitter is None:  # the TTL is read when first needed: readers never need it
            self._submitter = self._backend.submitter(config.idempotency_ttl_s(self._env))
        return self._submitter

    def _snapshot(self, flow: FlowLike) -> tuple[FlowSnapshot, CachedFlow | None]:
        """The snapshot to submit, and the cache entry to store once it was submitted."""
        from tracemind.flows import Flow, FlowSnapshot

        if isinstance(flow, FlowSnapshot):
            return flow, None
        if isinstance(flow, Flow):
            import hashlib
            import json

            text = json.dumps({"flow": flow.to_dict()}, sort_keys=True).encode()
            return FlowSnapshot.of(flow, flow.source_path, hashlib.sha256(text).hexdigest()), None
        if isinstance(flow, str | os.PathLike):
            from tracemind.flows.cache import load_flow_cached

            cached = load_flow_cached(os.fspath(flow), config.flow_cache_dir(self._env))
            return cached.snapshot, cached
        raise UsageError(f"flow: expected a path or a loaded flow, got {type(flow).__name__}")

    # -- reading ---------------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskInfo | None:
        """The task as the queue knows it now, or None when no task has this id (or it was
        purged from the dead-letter queue). Read-only."""
        info = self._backend.queue.find(_check_task_id(task_id))
        return None if info is None else TaskInfo.of(info)

    def wait(
        self,
        task_ids: str | Iterable[str],
        timeout_s: float | None = None,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[TaskInfo]:
        """Block until every task is finished (succeeded, dead or cancelled) and return them, in the order
        given. Raises :class:`NotFound` for an id no task has, :class:`WaitTimeout` (listing the
        unfinished ids) after ``timeout_s``. Read-only.

        Woken when a terminal record lands (inotify, on Linux), not by polling; it looks again
        at least once a second in case an event is lost. ``on_progress(finished, total)`` is
        called after each look."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        if timeout_s is not None and (timeout_s != timeout_s or timeout_s < 0):
            raise UsageError("timeout_s must not be negative")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        backend = self._backend
        with backend.watch_finished(ids) as watch:
            done: dict[str, TaskInfo] = {}
            for task_id in dict.fromkeys(ids):
                info = self.get(task_id)
                if info is None:
                    raise NotFound(f"task {task_id} not found")
                if info.finished:
                    done[task_id] = info
            while True:
                if on_progress is not None:
                    on_progress(len(done), len(set(ids)))
                if len(done) == len(set(ids)):
                    return [done[task_id] for task_id in ids]
                left_s = None if deadline is None else deadline - time.monotonic()
                if left_s is not None and left_s <= 0:
                    unfinished = [t for t in dict.fromkeys(ids) if t not in done]
                    raise WaitTimeout(unfinished, timeout_s or 0.0)
                watch.wait(left_s if left_s is not None else float("inf"))
                for task_id in [t for t in dict.fromkeys(ids) if t not in done]:
                    finished = backend.finished(task_id)  # O(1), unlike find
                    if finished is not None:
                        done[task_id] = TaskInfo.of(finished)

    def list_tasks(
        self,
        status: str | Iterable[str] | None = None,
        *,
        flow: str | None = None,
        limit: int = 50,
    ) -> list[TaskInfo]:
        """Up to ``limit`` tasks, newest first (by enqueue time; a task waiting for a retry by
        its due time), in ``status`` (one status or several; all when None), of flow id
        ``flow`` when given. Read-only; its cost follows ``limit``, not the size of the queue
        or its history (with ``flow``, at most 10,000 records are read)."""
        wanted = [status] if isinstance(status, str) else list(status or TaskStatus)
        try:
            statuses = {TaskStatus(s) for s in wanted}
        except ValueError:
            names = ", ".join(s.value for s in TaskStatus)
            raise UsageError(f"unknown status in {wanted!r} (one of: {names})") from None
        if not (isinstance(limit, int) and 0 < limit <= 10_000):
            raise UsageError(f"limit must be between 1 and 10000, got {limit!r}")
        infos = self._backend.newest(statuses, limit, flow_id=flow)
        return [TaskInfo.of(info) for info in infos]

    def cancel(self, task_id: str) -> bool:
        """Cancel a task. True when it was waiting (pending or delayed): it is ``cancelled`` now
        and will never run. False when it is in flight: its worker stops it before the next step
        (the step can look at ``ctx["cancel_requested"]()``), and it is reported ``cancelled``
        only once it stopped — a task that finishes first stays succeeded. Raises
        :class:`NotFound` for an unknown task, :class:`TraceMindError` for a finished one."""
        outcome = self._backend.cancel(task_id)
        if outcome == "unknown":
            raise NotFound(f"task {task_id} not found")
        if outcome not in ("cancelled", "requested"):  # already succeeded, dead or cancelled
            info = self.get(task_id)
            status = info.status.value if info is not None else "finished"
            raise TraceMindError(f"task {task_id} is already {status}: nothing to cancel")
        return outcome == "cancelled"

    def stats(self) -> QueueCounts:
        """Tasks by state, exact, read-only (what ``tm queue stats`` prints)."""
        counts, dead, damaged_dead = self._backend.counts()
        return QueueCounts(
            pending=counts.pending,
            delayed=counts.delayed,
            inflight=counts.inflight,
            dead=dead,
            damaged=counts.damaged + damaged_dead,
            oldest_pending_age_s=counts.oldest_pending_age_s,
        )

    # -- running here ----------------------------------------------------------------------------

    def run(self, flow: FlowLike, input: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run ``flow`` now, in this process, as ``tm run`` does, and return the final state.

        Each step runs once: no retries and no ``timeout_s`` (those apply to queued tasks);
        a hook that raises raises :class:`StepFailed` at once. Nothing is enqueued."""
        from tracemind.flows import run_flow

        snapshot, _ = self._snapshot(flow)
        state = check_input({} if input is None else _as_dict(input), "input")
        ctx: dict[str, Any] = {
            "task_id": None,
            "flow_id": snapshot.flow["id"],
            "attempt": 1,
            "_trigger": None,
        }
        return run_flow(snapshot, state, ctx)


def _location(location: LocationLike, env: Mapping[str, str]) -> Location:
    """``location`` as a :class:`Location`: None resolves as ``tm`` without flags does; a text
    with ``://`` is a location URL; any other path is a data root."""
    if location is None:
        return data_location(env=env)
    if isinstance(location, Location):
        return location
    text = os.fspath(location)
    if "://" in text:
        return Location.parse(text)
    return Location.for_root(text)


def _as_dict(value: Any) -> Any:
    """A mapping as a new dict; anything else as is (for :func:`check_input` to reject)."""
    return dict(value) if isinstance(value, Mapping) else value


def _check_task_id(task_id: str) -> str:
    from tracemind.queue.names import is_task_id

    if not isinstance(task_id, str) or not is_task_id(task_id):
        raise UsageError(f"not a task id: {task_id!r} (expected 22 hex digits)")
    return task_id
