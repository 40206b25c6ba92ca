"""The commented sample that ``tm triggers init`` writes, and the files it needs to validate."""

from __future__ import annotations

from pathlib import Path

from tracemind.errors import UsageError

SAMPLE_TRIGGERS = """\
# TraceMind triggers: enqueue flows on a schedule, when files land in a folder, or on HTTP calls.
#   tm triggers validate --path triggers.yaml   # check everything without running
#   tm triggers run --config triggers.yaml      # enqueue events until Ctrl-C (run workers with
#                                               # `tm workers start`, or use the daemon:
#   tm daemon start --enable-triggers --triggers-config triggers.yaml)
#
# Relative `flow:` and `path:` resolve against this file's folder. `input:` is rendered per event:
# "{{ name }}" alone keeps the value's JSON type; inside longer text it renders as text; an
# unknown name renders as null. Every event names: trigger_id, trigger_kind, event_id, timestamp.
# Each event gets an idempotency key scoped by the trigger id, so an event is enqueued once.
version: 1
triggers:
  # cron: 5 fields (minute hour day-of-month month day-of-week) with * , - /, or @hourly,
  # @daily, @weekly, @monthly, @yearly, or "@every 30s" / "@every 5m" / "@every 1h" (aligned to
  # the Unix epoch). Extra name: scheduled_at. Key: the scheduled time.
  - id: hourly-hello
    kind: cron
    cron: "0 * * * *"
    timezone: UTC          # IANA name (Europe/Berlin, America/New_York) or "local"
    # catch_up: true       # after downtime, fire the most recent missed time once (default:
    #                      # missed times are skipped; a first start never catches up)
    flow: flows/hello.yaml
    input: {name: "cron at {{ scheduled_at }}"}

  # filesystem: polls `path`; a file fires once its size and mtime held for two polls, and again
  # only when it changes. Names: path, name, parent, size, mtime (epoch seconds).
  - id: incoming-files
    kind: filesystem
    path: incoming
    pattern: "*.json"      # matched against the file name; dot-files are skipped
    recursive: false
    interval_seconds: 5    # at least 0.5
    # ignore_existing: true  # on the very first start, skip files already there
    flow: flows/hello.yaml
    input: {name: "{{ name }}", file_path: "{{ path }}", size: "{{ size }}"}

  # webhook: served on bind_host:bind_port (webhooks sharing a port share one server).
  # 404 unknown route, 405 wrong method, 401 bad secret, 413 body over max_body_bytes,
  # 400 malformed JSON; 202 {"task_id", "duplicate": false}; a repeated Idempotency-Key
  # header answers 200 with the first task id and "duplicate": true.
  # Names: method, path, query (lists), headers, body (parsed JSON), body_text.
  - id: hello-hook
    kind: webhook
    route: /hooks/hello
    method: POST
    bind_host: 127.0.0.1
    bind_port: 8081
    # Anything reachable from elsewhere (bind_host: 0.0.0.0, e.g. in a container) needs a shared
    # secret sent as the X-TraceMind-Secret header, read from an environment variable:
    # secret_env: TM_WEBHOOK_SECRET
    allow_unauthenticated: true   # accepted on a loopback bind_host only
    # max_body_bytes: 1048576
    flow: flows/hello.yaml
    input: {name: "{{ body.name }}", order: "{{ body }}"}
"""

SAMPLE_FLOW = """\
# A one-step flow for the sample triggers: greets state["name"].
flow:
  id: hello
  version: "1.0.0"
  entry: greet
  steps:
    - id: greet
      kind: task
      hooks:
        run: tracemind.steps.greet
    - id: finish
      kind: finish
  edges:
    - from: greet
      to: finish
"""


def write_sample(path: Path, *, force: bool = False) -> list[Path]:
    """Write the sample triggers file at ``path``, plus (when missing) the flow and the folder it
    names next to it; returns what was created. Refuses to overwrite ``path`` without ``force``."""
    if path.exists() and not force:
        raise UsageError(f"{path} already exists (use --force to overwrite it)")
    if path.is_dir():
        raise UsageError(f"{path} is a directory")
    created: list[Path] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SAMPLE_TRIGGERS, encoding="utf-8")
        created.append(path)
        flow = path.parent / "flows" / "hello.yaml"
        if not flow.exists():
            flow.parent.mkdir(parents=True, exist_ok=True)
            flow.write_text(SAMPLE_FLOW, encoding="utf-8")
            created.append(flow)
        incoming = path.parent / "incoming"
        if not incoming.exists():
            incoming.mkdir()
            created.append(incoming)
    except OSError as error:
        raise UsageError(f"cannot write {error.filename or path}: {error.strerror}") from error
    return created
