"""Webhooks over real HTTP on 127.0.0.1 (ephemeral ports), submitting to a fake queue."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trigger_fakes import FakeSubmitter, fake_flow_loader

from tracemind.errors import TraceMindError
from tracemind.triggers import TriggerRunner, TriggerStartError

SECRET = "correct horse battery staple"
ORDERS: dict[str, Any] = {
    "id": "orders",
    "kind": "webhook",
    "route": "/hooks/orders",
    "bind_port": 0,
    "secret_env": "TM_TEST_SECRET",
    "max_body_bytes": 256,
    "flow": "flows/hello.yaml",
    "input": {
        "order": "{{ body }}",
        "order_id": "{{ body.id }}",
        "summary": "order {{ body.id }} for {{ body.customer }}",
        "tags": "{{ query.tag }}",
        "headers": "{{ headers }}",
        "raw": "{{ body_text }}",
        "method": "{{ method }}",
        "path": "{{ path }}",
    },
}
PING: dict[str, Any] = {
    "id": "ping",
    "kind": "webhook",
    "route": "/hooks/ping",
    "method": "PUT",
    "bind_port": 0,
    "allow_unauthenticated": True,
    "flow": "flows/hello.yaml",
    "input": {"body": "{{ body }}"},
}


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def send(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            data = body.encode() if isinstance(body, str) else body
            connection.request(method, path, body=data, headers=headers or {})
            response = connection.getresponse()
            payload = response.read()
            return response.status, json.loads(payload) if payload else {}, response
        finally:
            connection.close()

    def post_order(self, body: str, **headers: str) -> tuple[int, dict[str, Any]]:
        all_headers = {"X-TraceMind-Secret": SECRET, "Content-Type": "application/json", **headers}
        status, payload, _ = self.send("POST", "/hooks/orders?tag=a&tag=b", body, all_headers)
        return status, payload


@pytest.fixture
def runner(load: Any, project: Path, submitter: FakeSubmitter) -> Iterator[TriggerRunner]:
    config = load(ORDERS, PING, environ={"TM_TEST_SECRET": SECRET})
    runner = TriggerRunner(
        config, submitter, state_dir=project / "state", flow_loader=fake_flow_loader
    )
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture
def client(runner: TriggerRunner) -> Client:
    addresses = runner.webhook_addresses()
    assert addresses["orders"] == addresses["ping"]  # one server for one host:port
    host, port = addresses["orders"]
    assert host == "127.0.0.1" and port > 0
    return Client(port)


def test_accepted_request_renders_json_typed_input(
    client: Client, submitter: FakeSubmitter
) -> None:
    body = {"id": 7, "customer": "ada", "lines": [{"sku": "x", "qty": 2}]}
    status, payload = client.post_order(json.dumps(body), **{"X-Request-Id": "r-1"})
    assert status == 202
    assert payload == {"task_id": "task-1", "duplicate": False}
    (call,) = submitter.calls
    assert call.inputs["order"] == body  # an object, not its repr
    assert call.inputs["order_id"] == 7
    assert call.inputs["summary"] == "order 7 for ada"
    assert call.inputs["tags"] == ["a", "b"]
    assert call.inputs["raw"] == json.dumps(body)
    assert call.inputs["method"] == "POST"
    assert call.inputs["path"] == "/hooks/orders"
    assert call.inputs["headers"]["x-request-id"] == "r-1"
    assert call.key is None  # no Idempotency-Key header, no key
    assert call.trigger is not None
    assert (call.trigger["trigger_id"], call.trigger["kind"]) == ("orders", "webhook")
    assert call.flow == {"loaded": "hello.yaml"}


def test_the_secret_never_reaches_the_input(client: Client, submitter: FakeSubmitter) -> None:
    client.post_order('{"id": 1}')
    rendered = json.dumps(submitter.calls[0].inputs)
    assert SECRET not in rendered
    assert "x-tracemind-secret" not in submitter.calls[0].inputs["headers"]


def test_idempotency_key_header_deduplicates(client: Client, submitter: FakeSubmitter) -> None:
    first = client.post_order('{"id": 1}', **{"Idempotency-Key": "evt-1"})
    again = client.post_order('{"id": 1}', **{"Idempotency-Key": "evt-1"})
    other = client.post_order('{"id": 2}', **{"Idempotency-Key": "evt-2"})
    assert first == (202, {"task_id": "task-1", "duplicate": False})
    assert again == (200, {"task_id": "task-1", "duplicate": True})
    assert other == (202, {"task_id": "task-2", "duplicate": False})
    assert [call.key for call in submitter.calls] == ["orders:evt-1", "orders:evt-2"]


def test_requests_without_the_header_are_distinct_events(
    client: Client, submitter: FakeSubmitter
) -> None:
    assert client.post_order('{"id": 1}')[0] == 202
    assert client.post_order('{"id": 1}')[0] == 202
    assert len(submitter.calls) == 2


def test_unknown_route_is_404(client: Client) -> None:
    status, payload, _ = client.send("POST", "/hooks/nope", "{}")
    assert status == 404
    assert "/hooks/nope" in payload["error"]


def test_wrong_method_is_405_with_allow(client: Client) -> None:
    status, _, response = client.send(
        "GET", "/hooks/orders", headers={"X-TraceMind-Secret": SECRET}
    )
    assert status == 405
    assert response.getheader("Allow") == "POST"


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x", SECRET[:-1]])
def test_missing_or_wrong_secret_is_401(
    client: Client, submitter: FakeSubmitter, secret: str | None
) -> None:
    headers = {} if secret is None else {"X-TraceMind-Secret": secret}
    status, payload, _ = client.send("POST", "/hooks/orders", '{"id": 1}', headers)
    assert status == 401
    assert "X-TraceMind-Secret" in payload["error"]
    assert submitter.calls == []


def test_oversized_body_is_413_after_the_secret_check(
    client: Client, submitter: FakeSubmitter
) -> None:
    big = json.dumps({"pad": "x" * 300})
    assert client.send("POST", "/hooks/orders", big)[0] == 401  # unauthenticated first
    assert client.post_order(big)[0] == 413
    assert client.post_order(json.dumps({"pad": "x" * 200}))[0] == 202  # under 256 bytes
    assert len(submitter.calls) == 1


@pytest.mark.parametrize("body", ["{not json", '{"id": 1', "NaN", b"\xff\xfe"])
def test_malformed_json_is_400(client: Client, submitter: FakeSubmitter, body: Any) -> None:
    status, payload = client.post_order(body)
    assert status == 400
    assert "not valid JSON" in payload["error"]
    assert submitter.calls == []


def test_unauthenticated_loopback_webhook_and_empty_body(
    client: Client, submitter: FakeSubmitter
) -> None:
    status, payload, _ = client.send("PUT", "/hooks/ping")
    assert status == 202
    assert payload["duplicate"] is False
    assert submitter.calls[0].inputs == {"body": None}


def test_queue_failure_is_503_and_counted(
    client: Client, submitter: FakeSubmitter, runner: TriggerRunner
) -> None:
    submitter.failing = True
    status, payload = client.post_order('{"id": 1}')
    assert status == 503
    assert "could not be enqueued" in payload["error"]
    entry = next(e for e in runner.stats() if e["id"] == "orders")
    assert entry["failed"] == 1
    assert "queue directory is not writable" in entry["last_error"]


def test_stats_count_enqueued_and_deduplicated(client: Client, runner: TriggerRunner) -> None:
    client.post_order('{"id": 1}', **{"Idempotency-Key": "k"})
    client.post_order('{"id": 1}', **{"Idempotency-Key": "k"})
    entry = next(e for e in runner.stats() if e["id"] == "orders")
    assert entry["kind"] == "webhook"
    assert (entry["enqueued"], entry["deduplicated"], entry["failed"]) == (1, 1, 0)
    assert entry["next_fire"] is None
    assert entry["last_fire"] is not None and entry["last_fire"].endswith("Z")


def test_a_port_in_use_fails_start_naming_it(
    load: Any, project: Path, submitter: FakeSubmitter
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = load({**PING, "bind_port": port})
        runner = TriggerRunner(
            config, submitter, state_dir=project / "state", flow_loader=fake_flow_loader
        )
        with pytest.raises(TriggerStartError) as caught:
            runner.start()
    assert isinstance(caught.value, TraceMindError) and caught.value.exit_code == 1
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "in use" in str(caught.value)
    assert "ping" in str(caught.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("tm-trigger-")]
