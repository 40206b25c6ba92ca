"""``tm run`` (synchronous, or ``--detached`` into the queue) and ``tm enqueue``.

The submitting paths load the flow through the snapshot cache (:mod:`tracemind.flows.cache`)
and store a new entry only once the task is queued. This module is on the start-up path of
``tm enqueue``: argparse, pathlib and typing stay out of its imports.
"""

from __future__ import annotations

import json
import sys

from tracemind.cli.common import (
    QuickForm,
    add_queue_options,
    check_text,
    open_submitter,
    parse_object,
    print_json,
)
from tracemind.cli.common import read_input as read_input_arg
from tracemind.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from tracemind.flows.cache import CachedFlow
    from tracemind.submit import Submission


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        description="Run FLOW synchronously and print the final state as JSON. With --detached, "
        "enqueue it for the daemon's workers instead (needs TM_ENABLE_DAEMON=1).",
    )
    run.add_argument("flow", metavar="FLOW", help="flow file (YAML or JSON)")
    run.add_argument("-i", "--input", default="{}", help="input: inline JSON object or @path")
    run.add_argument("--detached", action="store_true", help="enqueue instead of running")
    run.add_argument("--idempotency-key", help="with --detached: deduplicate submissions")
    run.add_argument("--json", action="store_true", help="with --detached: print JSON")
    add_queue_options(run)
    run.set_defaults(handler=run_command)

    enqueue = commands.add_parser(
        "enqueue",
        description="Enqueue FLOW with one input (-i) or one task per line of a JSONL file "
        "(--inputs, one durable batch). Prints the task id(s).",
    )
    enqueue.add_argument("flow", metavar="FLOW", help="flow file (YAML or JSON)")
    source = enqueue.add_mutually_exclusive_group()
    source.add_argument("-i", "--input", help="input: inline JSON object or @path (default {})")
    source.add_argument("--inputs", metavar="FILE.jsonl", help="one JSON object per line")
    enqueue.add_argument("--idempotency-key", help="deduplicate this submission by key")
    enqueue.add_argument(
        "--idempotency-key-field", metavar="F", help="with --inputs: take each line's key from F"
    )
    enqueue.add_argument("--json", action="store_true", help="print JSON")
    add_queue_options(enqueue)
    enqueue.set_defaults(handler=enqueue_command)


def run_command(args: argparse.Namespace) -> int:
    if args.detached:
        from tracemind.config import require_daemon_flag

        require_daemon_flag()
        return _enqueue_one(args, args.input)
    if args.idempotency_key:
        raise UsageError("--idempotency-key needs --detached")
    from tracemind.flows import load_flow, run_flow

    state = read_input_arg(args.input)
    snapshot = load_flow(args.flow)
    ctx: dict[str, Any] = {
        "task_id": None,
        "flow_id": snapshot.flow["id"],
        "attempt": 1,
        "trigger": None,
    }
    print_json(run_flow(snapshot, state, ctx))
    return 0


def enqueue_command(args: argparse.Namespace) -> int:
    if args.inputs is None:
        if args.idempotency_key_field:
            raise UsageError("--idempotency-key-field needs --inputs")
        return _enqueue_one(args, args.input or "{}")
    if args.idempotency_key:
        raise UsageError("--idempotency-key applies to one task; use --idempotency-key-field")
    submissions = read_jsonl(args.inputs, args.idempotency_key_field)
    flow = _load_flow(args.flow)
    results = open_submitter(args).submit_many(flow.snapshot, submissions)
    flow.remember()
    duplicates = sum(1 for r in results if r.duplicate)
    summary = {
        "enqueued": len(results) - duplicates,
        "duplicates": duplicates,
        "task_ids": [r.task_id for r in results],
    }
    if args.json:
        print_json(summary)
    else:
        print(f"enqueued {summary['enqueued']} task(s), {duplicates} duplicate(s)")
    return 0


def _enqueue_one(args: argparse.Namespace, raw_input: str) -> int:
    if args.idempotency_key is not None:
        check_text(args.idempotency_key, "--idempotency-key")
    state = read_input_arg(raw_input)
    flow = _load_flow(args.flow)
    submitter = open_submitter(args)
    result = submitter.submit(flow.snapshot, state, idempotency_key=args.idempotency_key)
    flow.remember()
    if args.json:
        print_json(result.to_dict())
    else:
        suffix = " (duplicate)" if result.duplicate else ""
        sys.stdout.write(f"{result.task_id}{suffix}\n")
    return 0


def _load_flow(path: str) -> CachedFlow:
    """The flow to submit, through the cache of validated snapshots (where the user has one)."""
    from tracemind.config import flow_cache_dir
    from tracemind.flows.cache import load_flow_cached

    return load_flow_cached(path, flow_cache_dir())


def read_jsonl(path: str, key_field: str | None) -> list[Submission]:
    """Every line of ``path`` as a submission; any bad line rejects the whole file."""
    from tracemind.submit import Submission

    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--inputs {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--inputs {path}: not UTF-8 text") from None
    submissions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        state = parse_object(line, f"--inputs {path}:{number}")
        key = None
        if key_field is not None:
            if key_field not in state:
                raise UsageError(f"--inputs {path}:{number}: no field {key_field!r} for the key")
            raw_key = state[key_field]
            key = raw_key if isinstance(raw_key, str) else json.dumps(raw_key, sort_keys=True)
        submissions.append(Submission(state, key))
    if not submissions:
        raise UsageError(f"--inputs {path}: no input lines")
    return submissions


_QUEUE_DIRS = {
    "--queue-dir": "queue_dir",
    "--idempotency-dir": "idempotency_dir",
    "--dlq-dir": "dlq_dir",
}

QUICK_FORMS = {
    "run": QuickForm(
        run_command,
        positional="flow",
        options={
            "-i": "input",
            "--input": "input",
            "--idempotency-key": "idempotency_key",
            **_QUEUE_DIRS,
        },
        switches={"--detached": "detached", "--json": "json"},
        defaults={"input": "{}"},
    ),
    "enqueue": QuickForm(
        enqueue_command,
        positional="flow",
        options={
            "-i": "input",
            "--input": "input",
            "--inputs": "inputs",
            "--idempotency-key": "idempotency_key",
            "--idempotency-key-field": "idempotency_key_field",
            **_QUEUE_DIRS,
        },
        switches={"--json": "json"},
        defaults={},
        exclusive=(frozenset({"input", "inputs"}),),
    ),
}
"""The plain spellings of ``tm run`` and ``tm enqueue`` (see :mod:`tracemind.cli.main`); they
must agree with :func:`register`, which ``tests/cli/test_quick_parse.py`` checks."""
