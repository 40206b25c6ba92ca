"""Which Redis failures pass by themselves (QueueUnavailable: a daemon waits them out) and which
need a person (QueueError: a daemon must not retry a wrong password forever)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from redis_server import RedisServer, free_port
from tm_testing import make_task
from tracemind.backend import open_backend
from tracemind.backend.redis.connection import _refused
from tracemind.errors import QueueError, QueueUnavailable


def test_a_server_that_is_not_there_is_unavailable_for_readers_and_submissions() -> None:
    backend = open_backend(f"redis://127.0.0.1:{free_port()}/0", durable=True, env={})
    with pytest.raises(QueueUnavailable, match="unreachable"):
        backend.queue.stats()
    with pytest.raises(QueueUnavailable, match="unreachable"):
        backend.queue.lease("c1", 30.0)
    with pytest.raises(QueueUnavailable, match="unreachable"):  # (tm enqueue's own client)
        backend.queue.enqueue([make_task(time.time)])


def test_a_wrong_password_is_an_error_not_an_outage(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="right").start()
    try:
        backend = open_backend(f"redis://:wrong@127.0.0.1:{server.port}/0", durable=True, env={})
        with pytest.raises(QueueError, match="authentication failed") as caught:
            backend.queue.stats()
        assert not isinstance(caught.value, QueueUnavailable)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("code", "passes"),
    [("LOADING", True), ("BUSY", True), ("MASTERDOWN", True), ("OOM", False), ("NOPERM", False)],
)
def test_refusals_that_pass_by_themselves_are_unavailable(code: str, passes: bool) -> None:
    error = _refused("127.0.0.1:6379", code)
    assert isinstance(error, QueueError)
    assert isinstance(error, QueueUnavailable) is passes
    assert str(error).startswith("redis 127.0.0.1:6379: ")
