"""The dashboard through the port compose publishes on 127.0.0.1: the page, its assets and its
JSON from the container, and the page in a real browser (headless Chromium on the host)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest

from browser_testing import open_browser

if TYPE_CHECKING:
    from conftest import Project

pytestmark = [pytest.mark.container]


@pytest.mark.timeout(180)
def test_the_dashboard_through_the_published_port(stack: Project) -> None:
    # Given the stack, and a task done and one dead whose inputs carry a marker
    marker = f"planted-{secrets.token_hex(8)}"
    done_id = stack.enqueue("sleep.yaml", {"seconds": 0, "secret": marker})
    dead_id = stack.enqueue("fail.yaml", {"secret": marker})
    assert stack.wait_task(done_id)["status"] == "succeeded"
    assert stack.wait_task(dead_id)["status"] == "dead"

    # When the page and its JSON are read through the published port
    page = stack.get("/")
    doc = stack.wait_for(
        "the failure in /dashboard.json",
        lambda: (d := stack.get("/dashboard.json").json())["activity"]["recent_failures"] and d,
        timeout_s=15,
    )

    # Then the page is served from the image (templates and static files in the package)
    assert page.status == 200 and page.content_type.startswith("text/html")
    assert stack.get("/static/dashboard.js").status == 200
    assert stack.get("/static/dashboard.css").status == 200
    # And its JSON sees the daemon in the container, the failure and the dead letter, no input
    assert doc["running"] is True and [m["kind"] for m in doc["cluster"]] == ["daemon"]
    assert dead_id in {f["task_id"] for f in doc["activity"]["recent_failures"]}
    assert dead_id in {d["task_id"] for d in doc["dashboard"]["dead_letters"]["newest"]}
    assert doc["dashboard"]["volume"]["total_bytes"] > 0
    assert doc["dashboard"]["actions"] is False  # compose sets no TM_STATUS_TOKEN
    assert marker not in page.body and marker not in stack.get("/dashboard.json").body

    # And in a browser the page fills in, with no console error and nothing from elsewhere
    origin = stack.url("")
    with open_browser() as browser:
        browser.open(stack.url("/"))
        browser.wait_for(
            "the page's first refresh",
            lambda: (
                browser.js("return document.getElementById('freshness').dataset.state;") == "live"
            ),
            15,
        )
        browser.wait_for("the dead letter", lambda: dead_id in browser.text("#dead-newest"), 10)
        assert marker not in browser.driver.page_source
        assert browser.foreign_requests(origin) == []
        assert browser.console_errors() == []
