"""``tm dlq ls|show|requeue|purge``: the dead-letter queue."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from tracemind.cli.common import (
    add_queue_options,
    backend_from,
    print_json,
    task_id_arg,
)
from tracemind.errors import NotFound, UsageError

if TYPE_CHECKING:
    from tracemind.backend.protocol import DeadLetters


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq")
    verbs = dlq.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("ls", help="dead tasks, newest first (read-only)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=ls_command)
    show = verbs.add_parser("show", help="one dead task with its error and history (read-only)")
    show.add_argument("task_id", metavar="ID", type=task_id_arg)
    show.set_defaults(handler=show_command)
    for name, handler, text in (
        ("requeue", requeue_command, "put dead tasks back in the queue"),
        ("purge", purge_command, "delete dead tasks (an audit copy is kept)"),
    ):
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("task_id", metavar="ID", nargs="?", type=task_id_arg)
        verb.add_argument("--all", action="store_true", help="every dead task")
        verb.add_argument("--json", action="store_true")
        verb.set_defaults(handler=handler)
    for verb in (ls, show, *verbs.choices.values()):
        if not any(a.dest == "queue_dir" for a in verb._actions):
            add_queue_options(verb)


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    from tracemind.clock import iso_utc

    dead_at = entry.get("dead_at")
    return {
        "task_id": entry.get("task_id"),
        "flow_id": entry.get("flow_id"),
        "attempts": entry.get("attempts"),
        "error": entry.get("error"),
        "dead_at": iso_utc(float(dead_at)) if isinstance(dead_at, int | float) else None,
    }


def ls_command(args: argparse.Namespace) -> int:
    entries = [_summary(e) for e in backend_from(args).dead_letters.newest_first()]
    if args.json:
        print_json(entries)
    elif not entries:
        print("the dead-letter queue is empty")
    else:
        for e in entries:
            print(f"{e['task_id']}  {e['dead_at']}  {e['flow_id']}  attempts={e['attempts']}")
            print(f"    {e['error']}")
    return 0


def show_command(args: argparse.Namespace) -> int:
    entry = backend_from(args).dead_letters.get(args.task_id)
    if entry is None:
        raise NotFound(f"task {args.task_id} is not in the dead-letter queue")
    view = _summary(entry)
    view.update(traceback=entry.get("traceback"), history=entry.get("history", []))
    view["input"] = entry.get("input")
    print_json(view)
    return 0


def _targets(args: argparse.Namespace, dead_letters: DeadLetters) -> list[str]:
    if bool(args.task_id) == bool(args.all):
        raise UsageError(f"dlq {args.verb}: give either a task ID or --all")
    if args.all:
        return [str(e["task_id"]) for e in dead_letters.newest_first()]
    return [args.task_id]


def _apply(args: argparse.Namespace, done_word: str, purge: bool) -> int:
    dead_letters = backend_from(args).dead_letters
    ids = _targets(args, dead_letters)
    dead_letters.quarantine_damaged()  # a writer moves damaged entries aside (and logs them)
    verb = dead_letters.purge if purge else dead_letters.requeue
    changed = [task_id for task_id in ids if verb(task_id)]
    if args.task_id and not changed:
        raise NotFound(f"task {args.task_id} is not in the dead-letter queue")
    if args.json:
        print_json({done_word: changed})
    else:
        print(f"{done_word} {len(changed)} task(s)")
    return 0


def requeue_command(args: argparse.Namespace) -> int:
    return _apply(args, "requeued", purge=False)


def purge_command(args: argparse.Namespace) -> int:
    return _apply(args, "purged", purge=True)
