"""``tm queue stats``, ``tm task show``, ``tm task wait``; ``tm queue migrate`` and ``prune``.

All but ``migrate`` and ``prune`` are read-only: they create or rewrite no file, and work on
directories the caller cannot write.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from tracemind.cli.common import add_queue_options, open_stores_from, print_json, task_id_arg
from tracemind.errors import NotFound, UsageError

if TYPE_CHECKING:
    from tracemind.queue.protocol import TaskInfo

EXIT_DEAD = 1
EXIT_DAMAGED = 1
EXIT_TIMEOUT = 3
WAIT_POLL_S = 0.05


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = commands.add_parser("queue")
    queue_verbs = queue.add_subparsers(dest="verb", metavar="VERB", required=True)
    stats = queue_verbs.add_parser("stats", help="counts by state (read-only)")
    stats.add_argument("--json", action="store_true")
    add_queue_options(stats)
    stats.set_defaults(handler=stats_command)
    migrate = queue_verbs.add_parser(
        "migrate",
        help="move a queue directory of the first layout to the bucketed one",
        description="Safe to repeat or interrupt; the daemon and worker pools also do it when "
        "they start. Stop processes of earlier versions first.",
    )
    migrate.add_argument("--json", action="store_true")
    add_queue_options(migrate)
    migrate.set_defaults(handler=migrate_command)
    prune = queue_verbs.add_parser(
        "prune",
        help="remove expired results, keys, DLQ audit copies, quarantined and temporary files",
        description="What a running daemon does in the background (docs/queue-format.md, "
        "Retention): for a queue no daemon serves.",
    )
    prune.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    prune.add_argument("--json", action="store_true")
    add_queue_options(prune)
    prune.set_defaults(handler=prune_command)

    task = commands.add_parser("task")
    task_verbs = task.add_subparsers(dest="verb", metavar="VERB", required=True)
    show = task_verbs.add_parser("show", help="a task's status, attempts and result (read-only)")
    show.add_argument("task_id", metavar="ID", type=task_id_arg)
    show.add_argument("--json", action="store_true")
    add_queue_options(show)
    show.set_defaults(handler=show_command)

    wait = task_verbs.add_parser(
        "wait",
        help="block until a task succeeds or dies",
        description="Exit 0 when the task succeeded, 1 when it is dead, 3 on timeout.",
    )
    wait.add_argument("task_id", metavar="ID", type=task_id_arg)
    wait.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S")
    wait.add_argument("--json", action="store_true")
    add_queue_options(wait)
    wait.set_defaults(handler=wait_command)


def queue_counts(args: argparse.Namespace) -> dict[str, Any]:
    stores = open_stores_from(args)
    counts = stores.queue.stats().to_dict()
    counts["dead"], damaged_dead = stores.queue.dead_counts()
    counts["damaged"] += damaged_dead
    return counts


def migrate_command(args: argparse.Namespace) -> int:
    moved = open_stores_from(args).queue.migrate()
    if args.json:
        print_json({"moved": moved})
    else:
        print(f"moved {moved} record(s); the queue uses the bucketed layout")
    return 0


def prune_command(args: argparse.Namespace) -> int:
    from tracemind.config import idempotency_ttl_s
    from tracemind.retention import Pruner, RetentionPolicy

    policy = RetentionPolicy.from_env(idempotency_ttl_s())
    removed = Pruner(open_stores_from(args), policy).prune(dry_run=args.dry_run, budget=sys.maxsize)
    if args.json:
        print_json({"dry_run": args.dry_run, "removed": dict(removed)})
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(", ".join(f"{verb} {count} {kind}" for kind, count in removed.items()))
    return 0


def stats_command(args: argparse.Namespace) -> int:
    counts = queue_counts(args)
    if args.json:
        print_json(counts)
    else:
        for key in ("pending", "delayed", "inflight", "dead", "oldest_pending_age_s", "damaged"):
            print(f"{key:22} {counts[key] if counts[key] is not None else '-'}")
    return 0


def describe(info: TaskInfo) -> dict[str, Any]:
    """The ``tm task show --json`` document of one task."""
    from tracemind.clock import iso_utc

    record = info.record
    history = record.get("history") or []
    view: dict[str, Any] = {
        "task_id": info.task_id,
        "flow_id": record.get("flow_id"),
        "status": info.status.value,
        "attempts": info.attempts,
        "enqueued_at": iso_utc(_number(record.get("enqueued_at"))),
        "finished_at": iso_utc(info.finished_s),
        "idempotency_key": record.get("idempotency_key"),
        "trigger": record.get("trigger"),
        "history": history,
    }
    if info.status == "succeeded":
        view["result"] = record.get("result")
    elif history or record.get("error"):
        view["error"] = record.get("error") or history[-1].get("error")
    if info.due_s is not None and info.status == "delayed":
        view["due_at"] = iso_utc(info.due_s)
    if not record:
        view["damaged"] = True
        if info.status != "succeeded":  # a done record still fences its task: it succeeded
            # A damaged copy never runs (the next consumer quarantines it): not pending.
            view["status"] = "damaged"
            view["found_as"] = info.status.value
    return view


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _find(args: argparse.Namespace) -> TaskInfo:
    info = open_stores_from(args).queue.find(args.task_id)
    if info is None:
        raise NotFound(f"task {args.task_id} not found")
    return info


def _print_task(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(view)
        return
    for key in ("task_id", "flow_id", "status", "attempts", "enqueued_at", "finished_at"):
        print(f"{key:12} {view.get(key) if view.get(key) is not None else '-'}")
    if "result" in view:
        print(f"{'result':12} {json.dumps(view['result'], sort_keys=True)}")
    if "error" in view:
        print(f"{'error':12} {view['error']}")


def show_command(args: argparse.Namespace) -> int:
    """Exit 0, or :data:`EXIT_DAMAGED` (with one line on stderr) when the task's only record is
    damaged — empty, torn or not a regular file: such a copy never runs."""
    view = describe(_find(args))
    _print_task(view, args.json)
    if view["status"] == "damaged":
        print(
            f"tm: error: task {args.task_id}: its record (found {view['found_as']}) is damaged "
            "and will not run; a consumer moves it to quarantine/",
            file=sys.stderr,
        )
        return EXIT_DAMAGED
    return 0


def wait_command(args: argparse.Namespace) -> int:
    if args.timeout is not None and args.timeout < 0:
        raise UsageError("--timeout must not be negative")
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        info = _find(args)
    except NotFound:
        raise UsageError(f"task {args.task_id} not found") from None
    while info.status not in ("succeeded", "dead"):
        if deadline is not None and time.monotonic() >= deadline:
            _print_task(describe(info), args.json)
            return EXIT_TIMEOUT
        time.sleep(WAIT_POLL_S)
        info = _find(args)
    _print_task(describe(info), args.json)
    return 0 if info.status == "succeeded" else EXIT_DEAD
