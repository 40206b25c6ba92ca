"""The dashboard over plain HTTP against a real daemon: the page's methods, headers and weight,
what /dashboard.json shows (and never shows), and the token-guarded actions."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from html.parser import HTMLParser

import pytest
from dashboard_harness import StatusDaemon, Work, request

from tm_testing import wait_until
from tracemind.queue.protocol import TaskStatus

pytestmark = pytest.mark.slow

PAGE_WEIGHT_MAX_BYTES = 100 * 1024
ACTION_PATHS = ("/api/dlq/{id}/requeue", "/api/dlq/{id}/purge", "/api/tasks/{id}/cancel")


class Assets(HTMLParser):
    """The same-page assets (scripts, stylesheets, icons) an HTML page references."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") if tag == "script" else found.get("href") if tag == "link" else None
        if url:
            self.urls.append(url)


def status_of(work: Work, task_id: str) -> TaskStatus | None:
    info = work.client.get(task_id)
    return None if info is None else info.status


def test_the_page_answers_get_and_head_only_with_security_headers_and_weighs_under_100_kb(
    status_daemon: Callable[..., StatusDaemon],
) -> None:
    # Given a daemon with a status server
    daemon = status_daemon()
    daemon.start()

    # When the page is read
    page = daemon.get("/")

    # Then it is HTML with a strict policy: no inline script, nothing from elsewhere
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "unsafe" not in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) is None, "inline script"
    assert " style=" not in page.text and "<style" not in page.text
    # And HEAD answers like GET without a body; every other method is refused
    head = request("HEAD", daemon.url + "/")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Security-Policy"] == page.headers["Content-Security-Policy"]
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        reply = request(method, daemon.url + "/", body=b"")
        assert reply.status == 405, method

    # And the page with everything it loads (HTML, CSS, JS, icon) weighs under 100 KB
    parser = Assets()
    parser.feed(page.text)
    assert len(parser.urls) == 3 and all(url.startswith("/static/") for url in parser.urls)
    assets = {url: daemon.get(url) for url in parser.urls}
    assert all(reply.status == 200 for reply in assets.values())
    weight = len(page.body) + sum(len(reply.body) for reply in assets.values())
    assert weight < PAGE_WEIGHT_MAX_BYTES, weight
    # And no asset names another origin (the SVG namespace is a name, not a request)
    for url, reply in assets.items():
        others = set(re.findall(r"https?://[^\s\"')]+", reply.text)) - {
            "http://www.w3.org/2000/svg"
        }
        assert not others, (url, others)
        assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_without_a_token_the_action_routes_do_not_exist(
    status_daemon: Callable[..., StatusDaemon], work: Work
) -> None:
    # Given a daemon without TM_STATUS_TOKEN and a dead letter
    daemon = status_daemon()
    daemon.start()
    task_id = work.client.enqueue(work.failing(), {})
    wait_until(lambda: status_of(work, task_id) is TaskStatus.DEAD, 30, "the dead letter")

    # When every action is POSTed, with or without a token header
    replies = [
        daemon.post(path.format(id=task_id), headers)
        for path in ACTION_PATHS
        for headers in ({}, {"Authorization": "Bearer anything"})
    ]

    # Then each is 404 and nothing changed; the page offers no action either
    assert [reply.status for reply in replies] == [404] * len(replies)
    assert status_of(work, task_id) is TaskStatus.DEAD
    assert 'data-actions="false"' in daemon.get("/").text
    assert daemon.get("/dashboard.json").json_doc()["dashboard"]["actions"] is False


def test_with_a_token_the_actions_need_it_work_and_are_logged(
    status_daemon: Callable[..., StatusDaemon], work: Work
) -> None:
    # Given a daemon with a token, two dead letters and a delayed task
    token = secrets.token_urlsafe(24)
    daemon = status_daemon({"TM_STATUS_TOKEN": token})
    daemon.start()
    failing = work.failing()
    to_requeue, to_purge = (work.client.enqueue(failing, {"n": n}) for n in range(2))
    waiting = work.client.enqueue(work.echo(), {}, delay_s=600)
    for task_id in (to_requeue, to_purge):
        wait_until(lambda t=task_id: status_of(work, t) is TaskStatus.DEAD, 30, "dead letters")
    bearer = {"Authorization": f"Bearer {token}"}

    # When actions are POSTed without the token, with a wrong one, or in the query string
    refused = [
        daemon.post(f"/api/dlq/{to_requeue}/requeue"),
        daemon.post(f"/api/dlq/{to_requeue}/requeue", {"Authorization": "Bearer wrong"}),
        daemon.post(f"/api/dlq/{to_requeue}/requeue", {"Authorization": token}),
        daemon.post(f"/api/dlq/{to_requeue}/requeue?token={token}"),
    ]
    # Then each is 401 and nothing moved
    assert [reply.status for reply in refused] == [401] * 4
    assert status_of(work, to_requeue) is TaskStatus.DEAD

    # When they are POSTed with the token
    requeued = daemon.post(f"/api/dlq/{to_requeue}/requeue", bearer)
    purged = daemon.post(f"/api/dlq/{to_purge}/purge", bearer)
    cancelled = daemon.post(f"/api/tasks/{waiting}/cancel", bearer)
    again = daemon.post(f"/api/dlq/{to_purge}/purge", bearer)
    not_an_id = daemon.post("/api/dlq/not-a-task/requeue", bearer)

    # Then each did what it says, and says so
    assert (requeued.status, requeued.json_doc()["message"]) == (200, "requeued")
    assert (purged.status, purged.json_doc()["done"]) == (200, True)
    assert (cancelled.status, cancelled.json_doc()["message"]) == (200, "cancelled")
    assert (again.status, again.json_doc()["done"]) == (404, False)
    assert not_an_id.status == 400
    wait_until(lambda: status_of(work, to_requeue) is TaskStatus.DEAD, 30, "the requeued rerun")
    assert work.client.get(to_requeue) is not None
    assert status_of(work, to_purge) is None
    assert status_of(work, waiting) is TaskStatus.CANCELLED
    assert daemon.get("/dashboard.json").json_doc()["dashboard"]["actions"] is True

    # And every attempt is logged with who and what; the token itself never
    wait_until(lambda: len(daemon.log_events("dashboard action")) >= 5, 10, "the action log")
    done = daemon.log_events("dashboard action")
    assert {(e["action"], e["task_id"], e["done"]) for e in done} >= {
        ("requeue", to_requeue, True),
        ("purge", to_purge, True),
        ("cancel", waiting, True),
        ("purge", to_purge, False),
    }
    assert all(e["remote"] == "127.0.0.1" and e["token"].startswith("sha256:") for e in done)
    assert len(daemon.log_events("dashboard action refused")) == 4
    assert token not in daemon.log.read_text()


def test_the_json_shows_failures_busy_workers_and_dead_letters_but_no_input(
    status_daemon: Callable[..., StatusDaemon], work: Work
) -> None:
    # Given a daemon, tasks whose inputs all carry a marker, and one failing with a long error
    marker = f"planted-{secrets.token_hex(8)}"
    daemon = status_daemon()
    daemon.start()
    long_message = "boom " + "z" * 400 + "\nsecond line"
    failed = work.client.enqueue(work.failing(), {"message": long_message, "secret": marker})
    done = work.client.enqueue(work.echo(), {"secret": marker})
    busy = work.client.enqueue(work.sleeping(), {"seconds": 4, "secret": marker})

    # When the dashboard's JSON shows the failure and the busy worker
    def seen() -> dict[str, object] | None:
        doc = daemon.get("/dashboard.json").json_doc()
        failures = doc["activity"]["recent_failures"]
        running = [t for m in doc["cluster"] for t in m["running"]]
        if failures and any(t["task_id"] == busy and t["step"] == "work" for t in running):
            return doc
        return None

    doc = wait_until(seen, 30, "the failure and the busy worker in /dashboard.json")

    # Then the failure names its task, flow, attempt and the error's first line, cut at 200
    [failure] = doc["activity"]["recent_failures"]
    assert (failure["task_id"], failure["flow_id"], failure["attempt"]) == (failed, "dash-fail", 1)
    assert failure["outcome"] == "dead-lettered"
    assert len(failure["error"]) == 200 and "boom zzz" in failure["error"]
    assert "second line" not in json.dumps(doc)
    # And the busy worker shows what it runs and for how long
    [member] = doc["cluster"]
    [running] = member["running"]
    assert running["flow_id"] == "dash-sleep" and running["elapsed_s"] >= 0
    assert member["uptime_s"] > 0 and member["kind"] == "daemon"
    # And the dead letter is counted by flow, listed with its cut error
    dead = doc["dashboard"]["dead_letters"]
    assert dead["by_flow"] == [{"flow_id": "dash-fail", "count": 1}]
    assert dead["newest"][0]["task_id"] == failed and len(dead["newest"][0]["error"]) <= 200
    # And the minute counts include the success and the failure
    wait_until(
        lambda: sum(daemon.get("/status").json_doc()["activity"]["succeeded"]) >= 1, 15, "a success"
    )
    assert sum(doc["activity"]["failed"]) == 1 and doc["activity"]["since"] is not None
    assert doc["dashboard"]["volume"]["free_bytes"] > 0
    assert work.client.get(done) is not None

    # And no route the page reads holds an input value
    for path in ("/", "/dashboard.json", "/status", "/static/dashboard.js"):
        assert marker not in daemon.get(path).text, path
