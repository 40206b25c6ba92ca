"""``tm triggers init|validate|run``: cron, filesystem and webhook triggers that enqueue flows."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from tracemind.cli.common import add_queue_options

if TYPE_CHECKING:
    from tracemind.triggers import ConfigReport, TriggerRunner

DEFAULT_PATH = "triggers.yaml"
_RUN_DESCRIPTION = (
    "Run the triggers of FILE in the foreground until SIGINT/SIGTERM. This only enqueues tasks: "
    "run them with `tm workers start` (same data directories), or run triggers inside the daemon "
    "with `tm daemon start --enable-triggers --triggers-config FILE`."
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    triggers = commands.add_parser("triggers")
    verbs = triggers.add_subparsers(dest="verb", metavar="VERB", required=True)

    init = verbs.add_parser(
        "init",
        help="write a commented sample triggers file",
        description="Write a commented sample triggers file (and, when missing, the sample "
        "flow flows/hello.yaml and the folder incoming/ next to it).",
    )
    init.add_argument(
        "--path", default=DEFAULT_PATH, help=f"where to write (default {DEFAULT_PATH})"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=init_command)

    validate = verbs.add_parser(
        "validate",
        help="check a triggers file without running it",
        description="Check cron syntax, timezones, paths, flow files, duplicate ids, routes and "
        "secrets; print one line per problem (with the trigger id) on stderr. Exit 0 or 2.",
    )
    validate.add_argument(
        "--path",
        "--config",
        dest="path",
        default=DEFAULT_PATH,
        metavar="FILE",
        help=f"the triggers file (default {DEFAULT_PATH})",
    )
    validate.set_defaults(handler=validate_command)

    run = verbs.add_parser(
        "run", help="run triggers in the foreground (enqueue only)", description=_RUN_DESCRIPTION
    )
    run.add_argument("--config", "--path", dest="config", required=True, metavar="FILE")
    add_queue_options(run)
    run.add_argument(
        "--state-dir",
        help="where last fire times and seen files are kept, under triggers/ (default: the "
        "daemon's state dir, env TM_DAEMON_STATE_DIR)",
    )
    run.set_defaults(handler=run_command)


def init_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tracemind.triggers import write_sample

    for created in write_sample(Path(args.path), force=args.force):
        print(f"created {created}/" if created.is_dir() else f"wrote {created}")
    print(f"next: tm triggers validate --path {args.path}")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    from tracemind.flows import load_flow
    from tracemind.triggers import check_config

    report = check_config(args.path, flow_loader=load_flow)
    _print_report(report)
    if report.config is None:
        return 2
    count = len(report.config.triggers)
    print(f"{args.path}: {count} trigger{'s' if count != 1 else ''} OK")
    return 0


def run_command(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tracemind import config, log
    from tracemind.cli.common import open_submitter
    from tracemind.triggers import TriggerRunner, check_config

    report = check_config(args.config)
    _print_report(report)
    if report.config is None:
        return 2
    submitter = open_submitter(args)
    runner = TriggerRunner(report.config, submitter, state_dir=config.state_dir(args.state_dir))
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log.configure()
        runner.start()
        _print_started(runner)
        while not stop.wait(0.5):
            pass
    finally:
        runner.stop()
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    print("triggers stopped", file=sys.stderr)
    return 0


def _print_report(report: ConfigReport) -> None:
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in report.problems:
        print(problem, file=sys.stderr)


def _print_started(runner: TriggerRunner) -> None:
    from tracemind.triggers import WebhookSpec

    addresses = runner.webhook_addresses()
    for spec, entry in zip(runner.config.triggers, runner.stats(), strict=True):
        detail = f"next fire {entry['next_fire']}" if entry["next_fire"] else "watching"
        if isinstance(spec, WebhookSpec):
            host, port = addresses[spec.id]
            detail = f"{spec.method} http://{host}:{port}{spec.route}"
        print(f"trigger {spec.id} ({spec.kind}): {detail}", file=sys.stderr)
    print(
        "triggers only enqueue: run the tasks with `tm workers start`; Ctrl-C stops",
        file=sys.stderr,
    )
