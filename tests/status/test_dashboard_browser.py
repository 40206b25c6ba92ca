"""The dashboard in a real browser (headless Chromium) against a real daemon on 127.0.0.1: it
loads without console errors or requests elsewhere, follows the queue without reloading, says
when its data is stale, works at 375 px and 1440 px, light and dark, and — with a token —
requeues a dead letter from the keyboard. The screenshots in docs/ are written here when
``TM_UPDATE_DOCS_SCREENSHOTS=1`` (otherwise into the test's temporary directory, so a run leaves
the checkout as it found it)."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dashboard_harness import StatusDaemon, Work

from browser_testing import Browser, open_browser, png_size
from tm_testing import wait_until
from tracemind.queue.protocol import TaskStatus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DOCS = Path(__file__).resolve().parents[2] / "docs"
UPDATE_DOCS_ENV = "TM_UPDATE_DOCS_SCREENSHOTS"
WIDE_PX, NARROW_PX = 1440, 375
STALE_WITHIN_S = 5.0


def freshness(browser: Browser) -> str:
    return str(browser.js("return document.getElementById('freshness').dataset.state;"))


def test_the_page_follows_the_queue_without_reloading_and_shows_no_input(
    status_daemon: Callable[..., StatusDaemon], work: Work, tmp_path: Path
) -> None:
    # Given a daemon with its status server and a yearly cron trigger, and the page open
    marker = f"planted-{secrets.token_hex(8)}"
    triggers = tmp_path / "triggers.json"
    trigger = {"id": "new-year", "kind": "cron", "cron": "0 0 1 1 *", "flow": str(work.echo())}
    triggers.write_text(
        json.dumps({"version": 1, "triggers": [{**trigger, "input": {"s": marker}}]})
    )
    daemon = status_daemon()
    daemon.start("--enable-triggers", "--triggers-config", str(triggers))
    with open_browser(WIDE_PX) as browser:
        browser.open(daemon.url + "/")
        browser.wait_for("the first refresh", lambda: freshness(browser) == "live", 15)
        browser.js("window.tmLoadedOnce = true;")

        # When 50 tasks and a failing one are enqueued (every input carries the marker)
        ids = work.client.enqueue_many(work.echo(), [{"n": n, "secret": marker} for n in range(50)])
        failed = work.client.enqueue(work.failing(), {"secret": marker})

        # Then the counts and the failure appear on the page, without a reload
        browser.wait_for(
            "50 successes in the chart",
            lambda: "50 succeeded, 1 failed" in browser.text("#chart-totals"),
            30,
        )
        browser.wait_for("the failure", lambda: failed in browser.text("#failures"), 10)
        assert "fail step" in browser.text("#failures")
        assert failed in browser.text("#dead-newest") and "dash-fail" in browser.text(
            "#dead-by-flow"
        )
        assert browser.text("#q-dead") == "1 task"
        assert browser.js("return window.tmLoadedOnce === true;"), "the page was reloaded"
        assert browser.js("return document.querySelectorAll('#chart rect.bar-ok').length;") >= 1
        assert len(ids) == 50
        # And the trigger is listed with its next fire
        triggers_text = browser.text("#triggers")
        assert "new-year" in triggers_text and "cron" in triggers_text
        assert browser.js("return document.querySelector('#triggers td[title]').title;").endswith(
            "-01-01T00:00:00Z"
        )

        # When a task runs long enough to be seen
        busy = work.client.enqueue(work.sleeping(), {"seconds": 6, "secret": marker})
        browser.wait_for("the busy worker", lambda: busy in browser.text("#running"), 15)
        running = browser.text("#running")
        assert "dash-sleep" in running and "work" in running

        # Then screenshots at both widths are written; the narrow one needs no sideways scroll
        shots = DOCS if os.environ.get(UPDATE_DOCS_ENV) == "1" else tmp_path
        wide = browser.screenshot(shots / "dashboard.png", WIDE_PX)
        narrow = browser.screenshot(shots / "dashboard-375.png", NARROW_PX)
        assert wide[0] == WIDE_PX and narrow[0] == NARROW_PX
        assert png_size((shots / "dashboard-375.png").read_bytes()) == narrow
        browser.set_width(NARROW_PX)
        assert not browser.overflows_horizontally()
        browser.set_width(WIDE_PX)
        assert not browser.overflows_horizontally()

        # And the page follows the colour scheme
        browser.set_dark(False)
        light = browser.js("return getComputedStyle(document.body).backgroundColor;")
        browser.set_dark(True)
        dark = browser.js("return getComputedStyle(document.body).backgroundColor;")
        assert light != dark

        # And no input value reached the page, nothing was asked of another origin, and the
        # console holds no error
        assert marker not in browser.driver.page_source
        assert marker not in browser.js("return document.documentElement.outerHTML;")
        assert browser.foreign_requests(daemon.url) == []
        assert browser.console_errors() == []


def test_the_page_says_its_data_is_stale_when_the_daemon_dies_and_recovers_after_a_restart(
    status_daemon: Callable[..., StatusDaemon],
) -> None:
    # Given the page open on a running daemon
    daemon = status_daemon()
    daemon.start()
    with open_browser(WIDE_PX) as browser:
        browser.open(daemon.url + "/")
        browser.wait_for("the first refresh", lambda: freshness(browser) == "live", 15)
        first_pid = daemon.process.pid if daemon.process else None

        # When the daemon is killed (its status server dies with it)
        daemon.kill()
        killed_at = time.monotonic()

        # Then within 5 s the page says its data is stale, and still shows the last data
        browser.wait_for("the stale notice", lambda: freshness(browser) == "stale", STALE_WITHIN_S)
        assert time.monotonic() - killed_at <= STALE_WITHIN_S
        assert "stale" in browser.text("#freshness").lower()
        assert browser.text("#q-pending") == "0 tasks"

        # When the daemon is started again on the same port
        daemon.start()

        # Then the page recovers by itself
        browser.wait_for("the page to recover", lambda: freshness(browser) == "live", 15)
        assert str(daemon.process.pid if daemon.process else None) in browser.text("#daemon")
        assert first_pid != (daemon.process.pid if daemon.process else None)
        # And the console holds only the failed requests Chromium logs itself, no script error
        errors = browser.console_errors()
        assert all(e["source"] == "network" and "/dashboard.json" in e["message"] for e in errors)


def test_requeue_from_the_page_by_keyboard_moves_the_dead_letter_back(
    status_daemon: Callable[..., StatusDaemon], work: Work, tmp_path: Path
) -> None:
    # Given a daemon with a token and a dead letter whose cause is then fixed
    token = secrets.token_urlsafe(24)
    daemon = status_daemon({"TM_STATUS_TOKEN": token})
    daemon.start()
    fixed = tmp_path / "fixed"
    task_id = work.client.enqueue(work.fail_unless_file(), {"marker": str(fixed)})
    wait_until(lambda: work.client.get(task_id).status is TaskStatus.DEAD, 30, "the dead letter")  # type: ignore[union-attr]
    fixed.touch()

    with open_browser(WIDE_PX) as browser:
        from selenium.webdriver.common.keys import Keys

        browser.open(daemon.url + "/")
        button = f'button[data-action="requeue"][data-task="{task_id}"]'
        browser.wait_for(
            "the requeue button",
            lambda: browser.js(f"return !!document.querySelector('{button}');"),
            15,
        )

        def focused() -> str:
            return str(
                browser.js(
                    "const e = document.activeElement; return e.id || e.dataset.action + ':' + (e.dataset.task || '');"
                )
            )

        def tab_to(target: str, backwards: bool = False) -> None:
            for _ in range(40):
                if focused() == target:
                    return
                browser.press(Keys.TAB, shift=backwards)
            pytest.fail(f"{target} is not reachable with the keyboard (stuck at {focused()!r})")

        # When the token is typed in and the requeue button pressed, by keyboard only
        tab_to("token")
        browser.press(token, Keys.ENTER)
        browser.wait_for(
            "the token to be taken", lambda: "Token set" in browser.text("#action-result"), 5
        )
        tab_to(f"requeue:{task_id}", backwards=True)
        browser.press(Keys.ENTER)

        # Then the page reports it, the dead letter is back in the queue and now succeeds
        browser.wait_for("the result", lambda: "requeued" in browser.text("#action-result"), 10)
        wait_until(
            lambda: work.client.get(task_id).status is TaskStatus.SUCCEEDED,  # type: ignore[union-attr]
            30,
            "the requeued task to succeed",
        )
        browser.wait_for(
            "the dead letter to leave the page",
            lambda: task_id not in browser.text("#dead-newest"),
            10,
        )
        assert browser.console_errors() == []
    [logged] = [e for e in daemon.log_events("dashboard action") if e["action"] == "requeue"]
    assert logged["task_id"] == task_id and logged["done"] is True
