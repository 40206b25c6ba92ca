"""``tm daemon start|stop|ps``: start and stop are gated by TM_ENABLE_DAEMON; ps is read-only
and runs without it (exit 0 while the daemon runs, 3 when it does not, as LSB ``status``)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracemind.cli.common import add_queue_options, backend_from, location_from, print_json
from tracemind.cli.workers import add_pool_options, pool_settings, positive_float, worker_count
from tracemind.errors import TraceMindError

if TYPE_CHECKING:
    from tracemind.backend.protocol import Backend

EXIT_NOT_RUNNING = 3
"""``tm daemon ps`` when no daemon runs (LSB ``status``: "program is not running")."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    daemon = commands.add_parser("daemon")
    verbs = daemon.add_subparsers(dest="verb", metavar="VERB", required=True)

    start = verbs.add_parser(
        "start",
        help="start the daemon (detached unless --foreground)",
        description="Start the daemon: a worker pool over the queue, with a heartbeat in the "
        "state dir. Returns once the daemon is up; a second start reports the running one.",
    )
    start.add_argument(
        "--workers", type=worker_count, default=2, metavar="N", help="worker processes, 1 to 256"
    )
    start.add_argument("--state-dir", help="state directory (env TM_DAEMON_STATE_DIR)")
    logs = start.add_mutually_exclusive_group()
    logs.add_argument("--log-file", help="log file (default: daemon.log in the state dir)")
    logs.add_argument("--inherit-logs", action="store_true", help="log JSON to stdout")
    start.add_argument("--foreground", action="store_true", help="run in this process")
    start.add_argument("--status-bind", metavar="HOST:PORT", help="serve /livez /readyz /status")
    start.add_argument("--enable-triggers", action="store_true", help="run trigger adapters")
    start.add_argument("--triggers-config", metavar="FILE", help="triggers.yaml")
    add_pool_options(start)
    start.set_defaults(handler=start_command)

    stop = verbs.add_parser("stop", help="drain and stop the daemon")
    stop.add_argument("--state-dir", help="state directory (env TM_DAEMON_STATE_DIR)")
    stop.add_argument("--timeout", type=positive_float, default=10.0, metavar="S")
    stop.add_argument("--no-force", action="store_true", help="never kill after the timeout")
    stop.set_defaults(handler=stop_command)

    ps = verbs.add_parser(
        "ps",
        help="is the daemon running, and what is it doing (read-only)",
        description="Report the daemon's state, workers, queue and status URL. Read-only, so "
        "it needs no TM_ENABLE_DAEMON. Exit 0 while a daemon runs, 3 when none does.",
    )
    ps.add_argument("--state-dir", help="state directory (env TM_DAEMON_STATE_DIR)")
    ps.add_argument("--json", action="store_true")
    add_queue_options(ps)
    ps.set_defaults(handler=ps_command)


def _gate() -> None:
    from tracemind.config import require_daemon_flag

    require_daemon_flag()


def _check_start_args(args: argparse.Namespace) -> None:
    from tracemind.errors import UsageError

    if args.enable_triggers and not args.triggers_config:
        raise UsageError("--enable-triggers needs --triggers-config FILE")
    if args.triggers_config and not args.enable_triggers:
        raise UsageError("--triggers-config needs --enable-triggers")
    if args.status_bind:
        host, sep, port = args.status_bind.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--status-bind {args.status_bind!r}: expected HOST:PORT")
    if args.enable_triggers:
        from tracemind.daemon.components import validate_triggers

        validate_triggers(Path(args.triggers_config))  # exit 2 before anything starts


def start_command(args: argparse.Namespace) -> int:
    _gate()
    _check_start_args(args)
    from tracemind import config
    from tracemind.daemon.state import StateDir

    state_dir = config.state_dir(args.state_dir)
    log_file = (
        None if args.inherit_logs else Path(args.log_file or state_dir / "daemon.log").absolute()
    )
    if args.foreground:
        return _run_foreground(args, state_dir, log_file)
    from tracemind.daemon.control import running_daemon, start_detached

    state = StateDir(state_dir)
    running = running_daemon(state)
    if running is not None:
        print(f"daemon already running (pid {running})")
        return 0
    backend = backend_from(args)
    _check_writable(backend, state_dir, log_file)
    instance_id = secrets.token_hex(6)
    argv = _foreground_argv(args, state_dir, log_file)
    pid, started = start_detached(state, argv, backend.location, log_file, instance_id)
    if not started:
        print(f"daemon already running (pid {pid})")
        return 0
    print(f"daemon started (pid {pid}); state: {state_dir}; log: {log_file or 'stdout'}")
    _name_the_others(backend, instance_id)
    return 0


def _name_the_others(backend: Backend, instance_id: str) -> None:
    """One line naming every other live daemon or pool on the same queue: several daemons on
    one queue is how users scale, but one started there by mistake should not go unnoticed."""
    others = [m for m in backend.registry.live() if m["instance_id"] != instance_id]
    if others:
        named = "; ".join(
            f"{m.get('kind', 'daemon')} {m['instance_id']} (pid {m.get('pid')} on "
            f"{m.get('host')}, state {m.get('state_dir') or '-'})"
            for m in others
        )
        print(f"also serving this queue: {named}")


def _foreground_argv(args: argparse.Namespace, state_dir: Path, log_file: Path | None) -> list[str]:
    """The detached daemon's command line. Where the data is goes in its environment instead
    (``TM_QUEUE_URL``, see :func:`~tracemind.daemon.control.start_detached`): a location may
    hold a password, and any user may read a command line."""
    argv = [
        "daemon", "start", "--foreground",
        "--workers", str(args.workers),
        "--state-dir", str(state_dir),
        "--runtime", args.runtime,
        "--lease-s", str(args.lease_s),
        "--drain-timeout", str(args.drain_timeout),
    ]  # fmt: skip
    argv += ["--log-file", str(log_file)] if log_file else ["--inherit-logs"]
    if args.status_bind:
        argv += ["--status-bind", args.status_bind]
    if args.enable_triggers:
        argv += [
            "--enable-triggers",
            "--triggers-config",
            str(Path(args.triggers_config).absolute()),
        ]
    return argv


def _check_writable(backend: Backend, state_dir: Path, log_file: Path | None) -> None:
    """One line and exit 1 (QueueError) when the location, the state dir or the log file
    cannot be written (e.g. a read-only mount), before anything starts."""
    from tracemind.daemon.service import check_log_writable
    from tracemind.fsutil import check_dirs_writable

    backend.prepare()
    check_dirs_writable(state_dir)
    if log_file is not None:
        check_log_writable(log_file)


def _run_foreground(args: argparse.Namespace, state_dir: Path, log_file: Path | None) -> int:
    from tracemind import log
    from tracemind.daemon.service import Daemon
    from tracemind.daemon.settings import DaemonSettings
    from tracemind.fsutil import not_writable

    try:
        _check_writable(backend_from(args), state_dir, log_file)
        try:
            sink: Any = log.LogFile(log_file) if log_file else sys.stdout
        except OSError as exc:
            raise not_writable(log_file or state_dir, exc) from None
    except TraceMindError as error:
        return _start_failed(error, args.status_bind)
    log.configure(sink)
    settings = DaemonSettings(
        pool=pool_settings(
            args,
            instance_id=os.environ.get("TM_DAEMON_INSTANCE_ID") or secrets.token_hex(6),
            log_file=str(log_file) if log_file else None,
        ),
        state_dir=state_dir,
        drain_timeout_s=args.drain_timeout,
        status_bind=args.status_bind,
        triggers_config=Path(args.triggers_config).absolute() if args.triggers_config else None,
    )
    daemon = Daemon(settings, log_sink=sink)
    try:
        return daemon.run()
    except TraceMindError as exc:
        daemon.log.error("daemon failed", error=str(exc))
        raise
    except Exception as exc:
        daemon.log.error("daemon failed", error=str(exc), exc_info=True)
        raise


def _start_failed(error: TraceMindError, status_bind: str | None) -> int:
    """A start-up check failed (a data directory or the log not writable): the one line on
    stderr and its JSON twin on stdout at once; then, for ``TM_START_ERROR_HOLD_S`` seconds (the
    image sets it), every status request is answered 503 with the same line, so a container
    health check reports it (see :mod:`tracemind.status.failed_start`); then exit 1."""
    from tracemind import log
    from tracemind.status.failed_start import hold_s_from, serve_failure

    log.configure(sys.stdout)
    log.get_logger("tracemind.daemon").error("daemon failed", error=str(error))
    print(f"tm: error: {error}", file=sys.stderr, flush=True)
    hold_s = hold_s_from(os.environ.get("TM_START_ERROR_HOLD_S"))
    if hold_s:
        serve_failure(status_bind, str(error), hold_s)
    return error.exit_code


def stop_command(args: argparse.Namespace) -> int:
    _gate()
    import socket

    from tracemind import config
    from tracemind.daemon.control import request_stop
    from tracemind.daemon.state import StateDir

    state = StateDir(config.state_dir(args.state_dir))
    by = f"tm daemon stop (pid {os.getpid()} on {socket.gethostname()})"
    print(request_stop(state, args.timeout, force=not args.no_force, by=by))
    return 0


def ps_command(args: argparse.Namespace) -> int:
    from tracemind import config
    from tracemind.backend import open_backend
    from tracemind.backend.location import LOCATION_VARIABLES
    from tracemind.daemon.state import StateDir
    from tracemind.daemon.status_doc import location_for, status_document

    explicit = None
    given = (args.queue_url, args.queue_dir, args.idempotency_dir, args.dlq_dir)
    if any(given) or any(os.environ.get(v) for v in LOCATION_VARIABLES):
        explicit = location_from(args)
    state = StateDir(config.state_dir(args.state_dir))
    location = location_for(state, explicit)
    backend = None if location is None else open_backend(location, durable=False)
    doc = status_document(state, backend)
    served = bool(doc["status_url"]) and doc["state"] != "stopped"
    doc["status_url"] = reachable_status_url(doc, state.meta() or {}, os.environ)
    if args.json:
        print_json(doc)
    else:
        _print_table(doc, served)
    return EXIT_NOT_RUNNING if doc["state"] == "stopped" else 0


def reachable_status_url(
    doc: dict[str, Any], meta: dict[str, Any], env: Mapping[str, str]
) -> str | None:
    """The status URL as this caller can reach it, or None.

    None while the daemon is stopped or serves no status endpoint. Otherwise ``$TM_STATUS_URL``
    when set; else, on the daemon's own host, the URL it recorded; else (typically the host of
    its container, whose port is published elsewhere) the URL it was told it is published at
    (``TM_STATUS_PUBLISHED_URL``, which compose.yaml sets), or None when it was not told."""
    import socket

    recorded = doc.get("status_url")
    if doc["state"] == "stopped" or not recorded:
        return None
    if env.get("TM_STATUS_URL"):
        return env["TM_STATUS_URL"]
    if doc.get("host") in (None, socket.gethostname()):
        return str(recorded)
    published = meta.get("status_url_published")
    return str(published) if published else None


def _print_table(doc: dict[str, Any], served: bool) -> None:
    if doc["state"] == "stopped":
        print(f"daemon: not running (state dir {doc['state_dir']})")
    else:
        print(
            f"daemon: {doc['state']}  pid {doc['pid']} on {doc['host']}  since {doc['started_at']}"
            f"  heartbeat {doc['heartbeat_age_s']}s ago" + ("  DRAINING" if doc["draining"] else "")
        )
        if doc["pid_verified"] is False:
            print(f"pid {doc['pid']} not verified here: {doc['pid_note']}")
        w = doc["workers"]
        ready = "ready" if doc["ready"] else f"not ready ({doc['reason']})"
        print(f"workers: {w['alive']}/{w['configured']} alive, {w['busy']} busy; {ready}")
    q = doc["queue"]
    if doc.get("queue_error"):
        print(f"queue: not reachable ({doc['queue_error']})")
    else:
        print(
            f"queue: {q['pending']} pending, {q['delayed']} delayed, {q['inflight']} in flight; "
            f"dlq: {doc['dlq']['pending']}"
        )
    unreadable = doc["unreadable_records"]
    for problem in unreadable["first"]:
        print(
            f"unreadable: {problem['record']} by uid {problem['uid']} ({problem['error']}); "
            f"{problem['fix']}"
        )
    if unreadable["count"] > len(unreadable["first"]):
        print(f"unreadable: {unreadable['count'] - len(unreadable['first'])} more")
    for trigger in doc["triggers"]:
        print(
            f"trigger {trigger.get('id')} ({trigger.get('kind')}): last {trigger.get('last_fire')}"
            f", next {trigger.get('next_fire')}, enqueued {trigger.get('enqueued')}"
        )
    if doc["status_url"]:
        print(f"status: {doc['status_url']}")
    elif served:
        print(
            f"status: served on host {doc['host']!r} (a container?) at a URL not reachable "
            "from here; set TM_STATUS_URL to its published address"
        )
