"""Pieces shared by the commands: directory options, JSON input, output."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracemind.errors import UsageError

if TYPE_CHECKING:
    from tracemind.stores import Stores
    from tracemind.submit import QueueSubmitter


def add_queue_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data directories (defaults: $TM_DATA_DIR/… or data/…)")
    group.add_argument("--queue-dir", help="queue directory (env TM_QUEUE_DIR)")
    group.add_argument("--idempotency-dir", help="idempotency directory (env TM_IDEMPOTENCY_DIR)")
    group.add_argument("--dlq-dir", help="dead-letter directory (env TM_DLQ_DIR)")


def open_stores_from(args: argparse.Namespace) -> Stores:
    from tracemind import config
    from tracemind.stores import open_stores

    dirs = config.data_dirs(
        getattr(args, "queue_dir", None),
        getattr(args, "idempotency_dir", None),
        getattr(args, "dlq_dir", None),
    )
    return open_stores(dirs, durable=config.durable())


def open_submitter(args: argparse.Namespace) -> QueueSubmitter:
    from tracemind import config

    return open_stores_from(args).submitter(config.idempotency_ttl_s())


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number out of range: {text}")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object from ``text``; anything else is a one-line UsageError naming ``what``.

    Strict JSON: NaN, Infinity and numbers too large for a float are rejected (they could not
    be written back out as JSON)."""
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:
        raise UsageError(f"{what}: malformed JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what}: must be a JSON object, got {type(value).__name__}")
    return value


def read_input(value: str) -> dict[str, Any]:
    """``-i`` takes inline JSON or ``@path`` to a file holding it."""
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsageError(f"-i {value}: cannot read {path} ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise UsageError(f"-i {value}: {path} is not UTF-8 text") from None
        return parse_object(text, f"-i {value}")
    return parse_object(value, "-i")


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def task_id_arg(text: str) -> str:
    from tracemind.queue.names import is_task_id

    if not is_task_id(text):
        raise argparse.ArgumentTypeError(f"not a task id: {text!r} (expected 22 hex digits)")
    return text
