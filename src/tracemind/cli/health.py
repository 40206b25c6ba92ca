"""``tm health``: probe the status endpoint (for HEALTHCHECKs in images that have no curl)."""

from __future__ import annotations

import argparse

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 3.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = commands.add_parser(
        "health",
        description="GET /readyz (default) or /livez; exit 0 on HTTP 200, 1 otherwise. URL: "
        "--url, else $TM_STATUS_URL, else the daemon's recorded status_url (only on the host "
        f"it recorded: not across a container boundary), else {DEFAULT_URL}.",
    )
    health.add_argument("--probe", choices=("ready", "live"), default="ready")
    health.add_argument("--url", help="base URL of the status endpoint")
    health.add_argument("--state-dir", help="state directory (to find the status URL)")
    health.add_argument("--quiet", action="store_true", help="print nothing")
    health.set_defaults(handler=health_command)


def _base_url(args: argparse.Namespace) -> str:
    import os
    import socket

    from tracemind.errors import UsageError

    if args.url:
        return str(args.url)
    if os.environ.get("TM_STATUS_URL"):
        return os.environ["TM_STATUS_URL"]
    from tracemind import config
    from tracemind.daemon.state import StateDir

    meta = StateDir(config.state_dir(args.state_dir)).meta() or {}
    recorded = meta.get("status_url")
    if recorded and meta.get("host") not in (None, socket.gethostname()):
        # The daemon recorded its URL as seen from its own host — typically inside a container,
        # whose port 8080 is published on another port here (TM_STATUS_PORT): probing the
        # recorded URL from this side would ask whatever else listens there.
        raise UsageError(
            f"the daemon runs on host {meta['host']!r} (a container?) and its status URL "
            f"{recorded} is as seen there; pass --url (e.g. http://127.0.0.1:$TM_STATUS_PORT) "
            "or set TM_STATUS_URL"
        )
    return str(recorded or DEFAULT_URL)


def health_command(args: argparse.Namespace) -> int:
    import sys
    import urllib.error
    import urllib.request

    from tracemind.errors import UsageError

    try:
        base = _base_url(args)
    except UsageError as exc:  # still 0/1 only: HEALTHCHECKs reserve exit code 2
        if not args.quiet:
            print(f"tm: error: {exc}", file=sys.stderr)
        return 1
    url = base.rstrip("/") + ("/readyz" if args.probe == "ready" else "/livez")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status, body = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        if not args.quiet:
            print(f"{url}: unreachable ({getattr(exc, 'reason', exc)})")
        return 1
    if not args.quiet:
        print(f"{url}: {status} {body.strip()}")
    return 0 if status == 200 else 1
