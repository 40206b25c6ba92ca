"""``tm queue stats``, ``tm task show``, ``tm task wait``; ``tm queue migrate`` and ``prune``.

All but ``migrate`` and ``prune`` are read-only: they create or rewrite no file, and work on
directories the caller cannot write. The read-only ones are the Python client's ``stats``,
``get`` and ``wait`` (:class:`tracemind.Client`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from tracemind.cli.common import (
    Progress,
    add_queue_options,
    backend_from,
    client_from,
    print_json,
    task_id_arg,
)
from tracemind.errors import NotFound, UsageError, WaitTimeout

if TYPE_CHECKING:
    from tracemind.client.tasks import TaskInfo

EXIT_DEAD = 1
EXIT_DAMAGED = 1
EXIT_TIMEOUT = WaitTimeout.exit_code
WAIT_DESCRIPTION = (
    "Block until every task ID is finished, woken when a task finishes (not by polling). "
    "Exit 0 when all succeeded, 1 when any is dead, 3 on timeout (2 for an unknown id). "
    "Prints each task as `tm task show` does (with --json: an object for one ID, a list for "
    "several). A progress line goes to stderr while it waits, when stderr is a terminal."
)


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
    show = task_verbs.add_parser(
        "show",
        help="a task's status, attempts and result (read-only)",
        description="Exit 0, 1 when the task's record is damaged, 1 when no task has ID.",
    )
    show.add_argument("task_id", metavar="ID", type=task_id_arg)
    show.add_argument("--json", action="store_true")
    add_queue_options(show)
    show.set_defaults(handler=show_command)

    wait = task_verbs.add_parser(
        "wait", help="block until tasks succeed or die", description=WAIT_DESCRIPTION
    )
    wait.add_argument("task_ids", metavar="ID", nargs="+", type=task_id_arg)
    wait.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S")
    wait.add_argument("--json", action="store_true")
    add_queue_options(wait)
    wait.set_defaults(handler=wait_command)
    ls = task_verbs.add_parser(
        "ls",
        help="tasks, newest first (read-only)",
        description="Newest first by enqueue time. Its cost follows --limit, not the size of "
        "the queue or its history.",
    )
    ls.add_argument("--status", action="append", metavar="S", help="pending, delayed, "
                    "inflight, succeeded, dead or cancelled (repeatable; default: all)")  # fmt: skip
    ls.add_argument("--flow", metavar="F", help="only tasks of flow id F")
    ls.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (50)")
    ls.add_argument("--json", action="store_true")
    add_queue_options(ls)
    ls.set_defaults(handler=ls_command)
    cancel = task_verbs.add_parser(
        "cancel",
        help="cancel waiting tasks; stop running ones before their next step",
        description="A pending or delayed task becomes cancelled and never runs. A task in "
        "flight stops before its next step (its step can check ctx['cancel_requested']()) and "
        "becomes cancelled then, unless it finishes first. Exit 0 when every task was "
        "cancelled or asked to stop, 1 when one was already finished or is unknown.",
    )
    cancel.add_argument("task_ids", metavar="ID", nargs="+", type=task_id_arg)
    cancel.add_argument("--json", action="store_true")
    add_queue_options(cancel)
    cancel.set_defaults(handler=cancel_command)


def migrate_command(args: argparse.Namespace) -> int:
    moved = backend_from(args).prepare()
    if args.json:
        print_json({"moved": moved})
    else:
        print(f"moved {moved} record(s); the queue uses the bucketed layout")
    return 0


def prune_command(args: argparse.Namespace) -> int:
    removed = backend_from(args).prune(dry_run=args.dry_run, budget=sys.maxsize)
    if args.json:
        print_json({"dry_run": args.dry_run, "removed": dict(removed)})
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(", ".join(f"{verb} {count} {kind}" for kind, count in removed.items()))
    return 0


def stats_command(args: argparse.Namespace) -> int:
    counts = client_from(args).stats().to_dict()
    if args.json:
        print_json(counts)
    else:
        for key in ("pending", "delayed", "inflight", "dead", "oldest_pending_age_s", "damaged"):
            print(f"{key:22} {counts[key] if counts[key] is not None else '-'}")
    return 0


def _print_task(view: dict[str, Any]) -> None:
    for key in ("task_id", "flow_id", "status", "attempts", "enqueued_at", "finished_at"):
        print(f"{key:12} {view.get(key) if view.get(key) is not None else '-'}")
    if "due_at" in view:
        print(f"{'due_at':12} {view['due_at']}")
    if "result" in view:
        print(f"{'result':12} {json.dumps(view['result'], sort_keys=True)}")
    if "error" in view:
        print(f"{'error':12} {view['error']}")


def _print_tasks(views: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(views[0] if len(views) == 1 else views)
        return
    for index, view in enumerate(views):
        if index:
            print()
        _print_task(view)


def show_command(args: argparse.Namespace) -> int:
    """Exit 0, or :data:`EXIT_DAMAGED` (with one line on stderr) when the task's only record is
    damaged — empty, torn or not a regular file: such a copy never runs."""
    info = client_from(args).get(args.task_id)
    if info is None:
        raise NotFound(f"task {args.task_id} not found (unknown, or finished and expired)")
    view = info.to_dict()
    _print_tasks([view], args.json)
    if view["status"] == "damaged":
        print(
            f"tm: error: task {args.task_id}: its record (found {view['found_as']}) is damaged "
            "and will not run; a consumer moves it to quarantine/",
            file=sys.stderr,
        )
        return EXIT_DAMAGED
    return 0


def wait_command(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.timeout >= 0:
        raise UsageError("--timeout must not be negative")
    client = client_from(args)
    progress = Progress(after_s=0.0)
    ids = list(args.task_ids)

    def show(finished: int, total: int) -> None:
        progress.show(f"waiting: {finished} of {total} finished ({progress.elapsed_s:.0f} s)")

    try:
        infos: list[TaskInfo | None] = list(
            client.wait(ids, timeout_s=args.timeout, on_progress=show)
        )
        code = 0 if all(i is not None and i.status == "succeeded" for i in infos) else EXIT_DEAD
    except NotFound as exc:
        raise UsageError(str(exc)) from None
    except WaitTimeout:
        infos = [client.get(task_id) for task_id in ids]
        code = EXIT_TIMEOUT
    finally:
        progress.done()
    _print_tasks(
        [i.to_dict() if i is not None else _gone(t) for t, i in zip(ids, infos, strict=True)],
        args.json,
    )
    return code


def ls_command(args: argparse.Namespace) -> int:
    infos = client_from(args).list_tasks(args.status, flow=args.flow, limit=args.limit)
    if args.json:
        print_json([info.to_dict() for info in infos])
    else:
        for info in infos:
            print(f"{info.task_id}  {info.status.value:9}  {info.flow_id or '-'}  "
                  f"attempts={info.attempts}")  # fmt: skip
    return 0


def cancel_command(args: argparse.Namespace) -> int:
    from tracemind.errors import TraceMindError

    client = client_from(args)
    outcome: dict[str, Any] = {"cancelled": [], "requested": [], "errors": {}}
    for task_id in dict.fromkeys(args.task_ids):
        try:
            outcome["cancelled" if client.cancel(task_id) else "requested"].append(task_id)
        except TraceMindError as exc:
            outcome["errors"][task_id] = str(exc)
    if args.json:
        print_json(outcome)
    else:
        for task_id in outcome["cancelled"]:
            print(f"{task_id}  cancelled")
        for task_id in outcome["requested"]:
            print(f"{task_id}  in flight: it stops before its next step")
        for message in outcome["errors"].values():
            print(f"tm: error: {message}", file=sys.stderr)
    return 1 if outcome["errors"] else 0


def _gone(task_id: str) -> dict[str, Any]:
    """The view of a task that disappeared while waited on (purged from the DLQ)."""
    return {"task_id": task_id, "status": "gone"}
