"""``tm run`` (synchronous, or ``--detached`` into the queue) and ``tm enqueue``.

The submitting paths load the flow through the snapshot cache (:mod:`tracemind.flows.cache`)
and store a new entry only once the task is queued. This module is on the start-up path of
``tm enqueue``: argparse, pathlib and typing stay out of its imports.
"""

from __future__ import annotations

import sys

from tracemind.cli.common import (
    Progress,
    QuickForm,
    add_app_dir_option,
    add_queue_options,
    backend_from,
    check_text,
    parse_object,
    print_json,
    read_stdin,
)
from tracemind.cli.common import read_input as read_input_arg
from tracemind.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from tracemind.backend.protocol import Backend, Submitter
    from tracemind.flows import FlowSnapshot
    from tracemind.flows.cache import CachedFlow
    from tracemind.submission import Submission

RUN_DESCRIPTION = (
    "Run FLOW synchronously in this process and print the final state as JSON. Each step runs "
    "once: the flow's retry policy and timeout_s apply to queued tasks only (a synchronous run "
    "is for trying a flow: it reports the first failure at once, exit 1, instead of sleeping "
    "through backoffs). With --detached, enqueue it for the daemon's workers instead (needs "
    "TM_ENABLE_DAEMON=1). Exit 0 ok, 1 a step failed, 2 bad input or invalid flow."
)
ENQUEUE_DESCRIPTION = (
    "Enqueue FLOW (or, with --step, a one-step flow around a hook) with one input (-i) or one "
    "task per line of a JSONL file (--inputs, one durable batch). Prints the task id(s). "
    "Exit 0 enqueued (or duplicate), 1 the queue cannot be written, 2 bad input or invalid flow."
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", description=RUN_DESCRIPTION)
    run.add_argument("flow", metavar="FLOW", help="flow file (YAML or JSON)")
    run.add_argument(
        "-i", "--input", default="{}", help="input: inline JSON object, @path, or - for stdin"
    )
    run.add_argument("--detached", action="store_true", help="enqueue instead of running")
    run.add_argument("--idempotency-key", help="with --detached: deduplicate submissions")
    run.add_argument("--json", action="store_true", help="print JSON (errors too)")
    add_app_dir_option(run, where="validating and running the flow here")
    add_queue_options(run)
    run.set_defaults(handler=run_command)

    enqueue = commands.add_parser("enqueue", description=ENQUEUE_DESCRIPTION)
    enqueue.add_argument(
        "flow", metavar="FLOW", nargs="?", help="flow file (YAML or JSON); or give --step"
    )
    enqueue.add_argument(
        "--step",
        metavar="HOOK",
        help="instead of FLOW: a one-step flow calling HOOK(ctx, state), e.g. mypkg.jobs.resize",
    )
    source = enqueue.add_mutually_exclusive_group()
    source.add_argument(
        "-i", "--input", help="input: inline JSON object, @path, or - for stdin (default {})"
    )
    source.add_argument(
        "--inputs", metavar="FILE.jsonl", help="one JSON object per line (- for stdin)"
    )
    enqueue.add_argument("--idempotency-key", help="deduplicate this submission by key")
    enqueue.add_argument(
        "--idempotency-key-field", metavar="F", help="with --inputs: take each line's key from F"
    )
    when = enqueue.add_mutually_exclusive_group()
    when.add_argument(
        "--delay", metavar="DURATION", help="keep the task delayed for 30s, 5m, 1h, 2d…"
    )
    when.add_argument(
        "--at", metavar="TIME", help="keep the task delayed until TIME (ISO-8601 with a zone)"
    )
    enqueue.add_argument("--json", action="store_true", help="print JSON (errors too)")
    add_app_dir_option(enqueue, where="validating the flow here")
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
    from tracemind.flows.runner import step_context

    state = read_input_arg(args.input)
    snapshot = load_flow(args.flow)
    ctx = step_context(task_id=None, flow_id=snapshot.flow["id"], attempt=1, trigger=None)
    print_json(run_flow(snapshot, state, ctx))
    return 0


def enqueue_command(args: argparse.Namespace) -> int:
    if args.step is not None and args.flow is not None:
        raise UsageError(f"give FLOW or --step HOOK, not both (got {args.flow!r} and --step)")
    if args.step is None and args.flow is None:
        raise UsageError("FLOW (a flow file) or --step HOOK is required")
    if args.inputs is None:
        if args.idempotency_key_field:
            raise UsageError("--idempotency-key-field needs --inputs")
        return _enqueue_one(args, args.input or "{}")
    if args.idempotency_key:
        raise UsageError("--idempotency-key applies to one task; use --idempotency-key-field")
    progress = Progress()
    phase = "reading the inputs"
    with progress.ticking(lambda: f"enqueue: {phase} ({progress.elapsed_s:.0f} s)"):
        submissions = read_jsonl(args.inputs, args.idempotency_key_field, _due_s(args))
        phase = f"validating the flow; {len(submissions)} inputs read"
        flow = _load(args)
        phase = f"writing {len(submissions)} tasks as one durable batch"
        backend = backend_from(args)
        results = _submitter(backend).submit_many(flow.snapshot, submissions)
    flow.remember()
    _warn_if_workers_cannot_import(backend, flow.snapshot)
    _notice_if_nobody_serves(backend)
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
    from tracemind.submission import Submission

    if args.idempotency_key is not None:
        check_text(args.idempotency_key, "--idempotency-key")
    state = read_input_arg(raw_input)
    due_s = _due_s(args)
    flow = _load(args)
    backend = backend_from(args)
    submission = Submission(state, args.idempotency_key, due_s=due_s)
    [result] = _submitter(backend).submit_many(flow.snapshot, [submission])
    flow.remember()
    _warn_if_workers_cannot_import(backend, flow.snapshot)
    _notice_if_nobody_serves(backend)
    if args.json:
        print_json(result.to_dict())
    else:
        suffix = " (duplicate)" if result.duplicate else ""
        sys.stdout.write(f"{result.task_id}{suffix}\n")
    return 0


def _due_s(args: argparse.Namespace) -> float | None:
    """When the task becomes due (``--delay``/``--at``), None for now; parsed only when given."""
    delay, at = getattr(args, "delay", None), getattr(args, "at", None)
    if delay is None and at is None:
        return None
    import time

    from tracemind.client.inputs import due_time, parse_delay

    return due_time(time.time(), None if delay is None else parse_delay(delay), at)


def _load(args: argparse.Namespace) -> CachedFlow:
    """The flow to submit: ``--step``'s one-step flow, or FLOW through the cache of validated
    snapshots (where the user has one)."""
    from tracemind.flows.cache import CachedFlow

    if getattr(args, "step", None) is not None:
        from tracemind.flows.single import step_flow

        return CachedFlow(step_flow(check_text(args.step, "--step")))
    from tracemind.config import flow_cache_dir
    from tracemind.flows.cache import load_flow_cached

    return load_flow_cached(args.flow, flow_cache_dir())


def _submitter(backend: Backend) -> Submitter:
    from tracemind.config import idempotency_ttl_s

    return backend.submitter(idempotency_ttl_s())


def _notice_if_nobody_serves(backend: Backend) -> None:
    """One line on stderr when no live daemon or worker pool is registered on the queue just
    written to: the task is durable, but waits until one starts (a queue no daemon reads is the
    usual cause)."""
    if not backend.registry.live():
        sys.stderr.write(
            f"tm: notice: no daemon or worker pool serves the queue at "
            f"{backend.location.redacted()}: the task waits until one starts there "
            "(see `tm daemon ps`)\n"
        )


def _warn_if_workers_cannot_import(backend: Backend, snapshot: FlowSnapshot) -> None:
    """One line on stderr when the daemon serving this queue recorded an import path that
    lacks a hook module this process imports; nothing for hooks of tracemind itself."""
    specs = [step.get("hooks", {}).get("run") for step in snapshot.flow["steps"]]
    modules = {s.split(":")[0].split(".")[0] for s in specs if isinstance(s, str)}
    modules.discard("tracemind")
    if not modules:
        return
    from tracemind.cli.daemon_imports import warn_unimportable

    warn_unimportable(backend.location, sorted(modules))


def read_jsonl(path: str, key_field: str | None, due_s: float | None = None) -> list[Submission]:
    """Every line of ``path`` (``-``: standard input) as a submission; any bad line rejects the
    whole file."""
    from tracemind.client.inputs import key_from_field
    from tracemind.submission import Submission

    if path == "-":
        lines = read_stdin("--inputs -").splitlines()
    else:
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
            key = key_from_field(state, key_field, f"--inputs {path}:{number}")
        submissions.append(Submission(state, key, due_s=due_s))
    if not submissions:
        raise UsageError(f"--inputs {path}: no input lines")
    return submissions


_QUEUE_DIRS = {
    "--queue-dir": "queue_dir",
    "--idempotency-dir": "idempotency_dir",
    "--dlq-dir": "dlq_dir",
}
_APP_DIRS = {"--app-dir": "app_dir"}

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
        defaults={"input": "{}", "queue_url": None},  # (--queue-url goes to argparse)
        appends=_APP_DIRS,
    ),
    "enqueue": QuickForm(
        enqueue_command,
        positional="flow",
        options={
            "-i": "input",
            "--input": "input",
            "--inputs": "inputs",
            "--step": "step",
            "--idempotency-key": "idempotency_key",
            "--idempotency-key-field": "idempotency_key_field",
            "--delay": "delay",
            "--at": "at",
            **_QUEUE_DIRS,
        },
        switches={"--json": "json"},
        defaults={"queue_url": None},  # (--queue-url goes to argparse)
        exclusive=(frozenset({"input", "inputs"}), frozenset({"delay", "at"})),
        appends=_APP_DIRS,
        instead_of_positional=frozenset({"step"}),
    ),
}
"""The plain spellings of ``tm run`` and ``tm enqueue`` (see :mod:`tracemind.cli.main`); they
must agree with :func:`register`, which ``tests/cli/test_quick_parse.py`` checks."""
