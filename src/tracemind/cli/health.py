"""``tm health``: probe the status endpoint (for HEALTHCHECKs in images that have no curl)."""

from __future__ import annotations

import argparse

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 3.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = commands.add_parser(
        "health",
        help="probe the daemon's status endpoint: exit 0 healthy, 1 not",
        description="GET /readyz (default) or /livez; exit 0 on HTTP 200, 1 otherwise. URL: "
        "--url, else $TM_STATUS_URL, else the daemon's recorded status_url, else "
        f"{DEFAULT_URL}.",
    )
    health.add_argument("--probe", choices=("ready", "live"), default="ready")
    health.add_argument("--url", help="base URL of the status endpoint")
    health.add_argument("--state-dir", help="state directory (to find the status URL)")
    health.add_argument("--quiet", action="store_true", help="print nothing")
    health.set_defaults(handler=health_command)


def _base_url(args: argparse.Namespace) -> str:
    import os

    if args.url:
        return str(args.url)
    if os.environ.get("TM_STATUS_URL"):
        return os.environ["TM_STATUS_URL"]
    from tracemind import config
    from tracemind.daemon.state import StateDir

    meta = StateDir(config.state_dir(args.state_dir)).meta() or {}
    return str(meta.get("status_url") or DEFAULT_URL)


def health_command(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    url = _base_url(args).rstrip("/") + ("/readyz" if args.probe == "ready" else "/livez")
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
