// The TraceMind dashboard: reads dashboard.json every 2 s and redraws the page in place.
// Every value from the server goes into the page as text (textContent), never as markup.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const FETCH_TIMEOUT_MS = 1800;
  const STALE_HEARTBEAT_S = 5;
  const TOKEN_KEY = "tracemind-status-token";
  const SVG = "http://www.w3.org/2000/svg";
  const actionsEnabled = document.body.dataset.actions === "true";

  let lastOkMs = null; // when the last refresh succeeded (this browser's clock)
  let lastDoc = null;
  let lastError = null;

  // -- building blocks --------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  // Replaces a section's content; a focused action button keeps the focus (keyboard users).
  function fill(id, ...nodes) {
    const target = byId(id);
    if (!target) return;
    const focused = document.activeElement;
    const keep = focused && target.contains(focused) && focused.dataset.action ? [focused.dataset.action, focused.dataset.task] : null;
    target.replaceChildren(...nodes);
    if (keep) {
      for (const button of target.querySelectorAll("button[data-action]")) {
        if (button.dataset.action === keep[0] && button.dataset.task === keep[1]) button.focus();
      }
    }
  }

  function text(id, value) {
    const target = byId(id);
    if (target) target.textContent = value;
  }

  function table(headers, rows, empty) {
    if (!rows.length) return el("p", { class: "empty", text: empty });
    const head = el("tr", {}, ...headers.map(([label, cls]) => el("th", { class: cls, scope: "col", text: label })));
    const body = rows.map((cells) => el("tr", {}, ...cells));
    return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
  }

  function td(value, cls, title) {
    return el("td", { class: cls, title: title }, value === null || value === undefined ? "—" : value);
  }

  // -- units ------------------------------------------------------------------------------------

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    const s = Math.max(0, seconds);
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + Math.floor(s % 60) + " s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h " + (m % 60) + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function bytes(n) {
    if (typeof n !== "number") return "—";
    const units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let value = n;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return (unit ? value.toFixed(value < 10 ? 2 : 1) : value) + " " + units[unit];
  }

  function count(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "—";
  }

  function tasks(n) {
    return typeof n === "number" ? count(n) + (n === 1 ? " task" : " tasks") : "—";
  }

  function clock(iso) {
    if (!iso) return "—";
    const when = new Date(iso);
    if (isNaN(when)) return iso;
    const sameDay = when.toDateString() === new Date().toDateString();
    // sv-SE formats as "2026-11-26 13:50:55" (local time); today's times show the time only
    return sameDay ? when.toLocaleTimeString("en-GB", { hour12: false }) : when.toLocaleString("sv-SE");
  }

  function ago(iso, nowMs) {
    if (!iso) return null;
    const when = Date.parse(iso);
    return isNaN(when) ? null : (nowMs - when) / 1000;
  }

  function timeCell(iso, nowMs) {
    const age = ago(iso, nowMs);
    const label = iso ? clock(iso) + (age !== null ? " (" + duration(age) + " ago)" : "") : "—";
    return td(label, "num", iso || null);
  }

  // -- sections ---------------------------------------------------------------------------------

  function renderQueue(doc) {
    text("q-pending", tasks(doc.queue.pending));
    text("q-delayed", tasks(doc.queue.delayed));
    text("q-inflight", tasks(doc.queue.inflight));
    text("q-dead", tasks(doc.dlq.pending));
    text("q-oldest", doc.queue.oldest_pending_age_s === null ? "none waiting" : duration(doc.queue.oldest_pending_age_s));
  }

  function renderChart(activity, nowMs) {
    const ok = activity.succeeded || [];
    const failed = activity.failed || [];
    const n = ok.length;
    const width = Math.max(240, Math.round(byId("chart").clientWidth) || 600); // 1 unit = 1 px
    const height = 160;
    const base = height - 18;
    const top = 14;
    const peak = Math.max(1, ...ok.map((v, i) => v + (failed[i] || 0)));
    const svg = document.createElementNS(SVG, "svg");
    const totalOk = ok.reduce((a, b) => a + b, 0);
    const totalFailed = failed.reduce((a, b) => a + b, 0);
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "Last hour: " + totalOk + " attempts succeeded, " + totalFailed + " failed");
    const add = (tag, attrs, content) => {
      const node = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      if (content !== undefined) node.textContent = content;
      svg.append(node);
      return node;
    };
    add("line", { class: "axis", x1: 0, y1: base, x2: width, y2: base });
    const slot = n ? width / n : width;
    for (let i = 0; i < n; i += 1) {
      const x = i * slot + slot * 0.1;
      const w = slot * 0.8;
      const hOk = ((base - top) * ok[i]) / peak;
      const hFailed = ((base - top) * (failed[i] || 0)) / peak;
      if (hOk > 0) add("rect", { class: "bar-ok", x: x, y: base - hOk, width: w, height: hOk });
      if (hFailed > 0) add("rect", { class: "bar-failed", x: x, y: base - hOk - hFailed, width: w, height: hFailed });
    }
    add("text", { x: 2, y: 11 }, "peak " + count(peak) + " per minute");
    add("text", { x: 2, y: height - 4 }, "60 min ago");
    add("text", { x: width - 2, y: height - 4, "text-anchor": "end" }, "now");
    fill("chart", svg);
    text("chart-totals", "· " + count(totalOk) + " succeeded, " + count(totalFailed) + " failed in the last hour");
    const since = activity.since;
    text(
      "chart-note",
      since
        ? "Counted in the daemon's memory since it started at " + clock(since) + " (" + duration(ago(since, nowMs)) +
            " ago); a restart starts the counts empty."
        : "No counts: no daemon is running here to keep them (they live in its memory and start empty after a restart)."
    );
  }

  function renderCluster(doc, nowMs) {
    const members = doc.cluster || [];
    const rows = members.map((m) => [
      td(m.kind),
      td(m.host, "id"),
      td(m.pid, "num"),
      td(duration(m.uptime_s), "num", m.started_at),
      td(duration(m.heartbeat_age_s), "num"),
      td(count(m.workers.alive) + " / " + count(m.workers.busy) + " / " + count(m.workers.configured), "num"),
      td(m.draining ? el("span", { class: "badge warn", text: "draining" }) : "no"),
      td(m.version),
    ]);
    fill(
      "cluster",
      table(
        [["Kind"], ["Host"], ["PID", "num"], ["Uptime", "num"], ["Heartbeat", "num"], ["Workers alive / busy / configured", "num"], ["Draining"], ["Version"]],
        rows,
        "No daemon or pool serves this queue right now."
      )
    );
    const running = [];
    for (const m of members) {
      for (const t of m.running || []) {
        running.push([td(m.host + " " + m.pid, "id"), td(t.task_id, "id"), td(t.flow_id, "flow"), td(t.step, "flow"), td(t.attempt, "num"), td(duration(t.elapsed_s), "num")]);
      }
    }
    fill("running", table([["Daemon"], ["Task"], ["Flow"], ["Step"], ["Attempt", "num"], ["Elapsed", "num"]], running, "No worker is busy."));
  }

  function renderFailures(activity, nowMs) {
    const rows = (activity.recent_failures || []).map((f) => [
      timeCell(f.at, nowMs),
      td(f.task_id, "id"),
      td(f.flow_id, "flow"),
      td(f.attempt, "num"),
      td(f.outcome === "retrying" ? "will retry" : f.outcome === "dead-lettered" ? "dead" : "worker died"),
      td(f.error, "error"),
    ]);
    fill(
      "failures",
      table([["When", "num"], ["Task"], ["Flow"], ["Attempt", "num"], ["Then"], ["Error"]], rows, "No failure since the daemon started.")
    );
  }

  function actionButton(label, action, taskId, danger) {
    return el("button", {
      type: "button",
      class: danger ? "danger" : null,
      "data-action": action,
      "data-task": taskId,
      "aria-label": label + " " + taskId,
      text: label,
      onclick: () => runAction(action, taskId, label),
    });
  }

  function renderDeadLetters(doc, nowMs) {
    const dead = (doc.dashboard && doc.dashboard.dead_letters) || { by_flow: [], newest: [] };
    fill(
      "dead-by-flow",
      table([["Flow"], ["Dead letters", "num"]], dead.by_flow.map((f) => [td(f.flow_id || "(none)", "flow"), td(count(f.count), "num")]), "The dead-letter queue is empty.")
    );
    const headers = [["Dead at", "num"], ["Task"], ["Flow"], ["Attempts", "num"], ["Error"]];
    if (actionsEnabled) headers.push(["Actions"]);
    const rows = dead.newest.map((d) => {
      const cells = [timeCell(d.dead_at, nowMs), td(d.task_id, "id"), td(d.flow_id, "flow"), td(d.attempts, "num"), td(d.error, "error")];
      if (actionsEnabled) {
        cells.push(el("td", { class: "actions" }, actionButton("Requeue", "requeue", d.task_id), actionButton("Purge", "purge", d.task_id, true)));
      }
      return cells;
    });
    fill("dead-newest", table(headers, rows, "No dead letters."));
    if (dead.truncated) byId("dead-newest").append(el("p", { class: "note", text: "Counted from the first dead letters read only (there are more)." }));
  }

  function renderWaiting(doc, nowMs) {
    if (!actionsEnabled) return;
    const waiting = (doc.dashboard && doc.dashboard.waiting) || [];
    const rows = waiting.map((w) => [
      timeCell(w.enqueued_at, nowMs),
      td(w.task_id, "id"),
      td(w.flow_id, "flow"),
      td(w.status),
      el("td", { class: "actions" }, actionButton("Cancel", "cancel", w.task_id, true)),
    ]);
    fill("waiting", table([["Enqueued", "num"], ["Task"], ["Flow"], ["Status"], ["Actions"]], rows, "No task is waiting."));
  }

  function renderTriggers(doc, nowMs) {
    const rows = (doc.triggers || []).map((t) => [
      td(t.id),
      td(t.kind),
      timeCell(t.last_fire, nowMs),
      td(t.next_fire ? clock(t.next_fire) : "—", "num", t.next_fire),
      td(count(t.enqueued), "num"),
      td(count(t.deduplicated), "num"),
      td(count(t.failed), "num"),
      td(t.last_error, "error"),
    ]);
    fill(
      "triggers",
      table(
        [["Trigger"], ["Kind"], ["Last fire", "num"], ["Next fire", "num"], ["Enqueued", "num"], ["Deduplicated", "num"], ["Failed", "num"], ["Last error"]],
        rows,
        "No triggers run in this daemon."
      )
    );
  }

  function renderStorage(doc) {
    const dash = doc.dashboard || {};
    text("location", dash.location || doc.queue_url || "—");
    const vol = dash.volume;
    text(
      "volume",
      vol ? bytes(vol.free_bytes) + " free of " + bytes(vol.total_bytes) + " (" + (vol.total_bytes ? Math.round((100 * vol.free_bytes) / vol.total_bytes) : 0) + " % free)" : "—"
    );
    const parts = ["state " + doc.state];
    if (doc.pid) parts.push("pid " + doc.pid);
    if (doc.version) parts.push("version " + doc.version);
    if (doc.reason) parts.push(doc.reason);
    text("daemon", parts.join(" · "));
  }

  function render(doc) {
    const nowMs = Date.now();
    renderQueue(doc);
    renderChart(doc.activity || {}, nowMs);
    renderCluster(doc, nowMs);
    renderFailures(doc.activity || {}, nowMs);
    renderDeadLetters(doc, nowMs);
    renderWaiting(doc, nowMs);
    renderTriggers(doc, nowMs);
    renderStorage(doc);
  }

  // -- freshness --------------------------------------------------------------------------------

  function showFreshness() {
    const badge = byId("freshness");
    const nowMs = Date.now();
    let state = "live";
    let message;
    if (lastOkMs === null) {
      state = lastError ? "stale" : "loading";
      message = lastError ? "No data: the status server does not answer (" + lastError + "). Retrying every 2 s." : "Loading…";
    } else if (lastError) {
      state = "stale";
      message = "Data is stale: the last refresh failed (" + lastError + "); shown as of " + duration((nowMs - lastOkMs) / 1000) + " ago. Retrying every 2 s.";
    } else if (!lastDoc.running || (lastDoc.heartbeat_age_s !== null && lastDoc.heartbeat_age_s > STALE_HEARTBEAT_S)) {
      state = "stale";
      message = "Data is stale: the daemon is " + lastDoc.state + " (heartbeat " + duration(lastDoc.heartbeat_age_s) + " old).";
    } else {
      message = "Live · updated " + new Date(lastOkMs).toLocaleTimeString("en-GB", { hour12: false });
    }
    badge.dataset.state = state;
    badge.textContent = message;
  }

  async function refresh() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch("dashboard.json", { cache: "no-store", signal: controller.signal });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const doc = await response.json();
      render(doc);
      lastDoc = doc;
      lastOkMs = Date.now();
      lastError = null;
    } catch (error) {
      lastError = error && error.name === "AbortError" ? "no answer within 2 s" : "connection failed";
    } finally {
      clearTimeout(timer);
      showFreshness();
    }
  }

  async function loop() {
    await refresh();
    setTimeout(loop, REFRESH_MS);
  }

  // -- actions ----------------------------------------------------------------------------------

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (error) {
      return byId("token").value;
    }
  }

  async function runAction(action, taskId, label) {
    const note = byId("action-result");
    const secret = token() || byId("token").value;
    if (!secret) {
      note.textContent = "Enter the action token first.";
      byId("token").focus();
      return;
    }
    if (action === "purge" && !window.confirm("Purge dead letter " + taskId + " for good?")) return;
    const url = action === "cancel" ? "api/tasks/" + taskId + "/cancel" : "api/dlq/" + taskId + "/" + action;
    note.textContent = label + " " + taskId + "…";
    try {
      const response = await fetch(url, { method: "POST", headers: { Authorization: "Bearer " + secret }, cache: "no-store" });
      let body = {};
      try {
        body = await response.json();
      } catch (error) {
        body = {};
      }
      note.textContent = response.ok
        ? label + " " + taskId + ": " + body.message
        : label + " " + taskId + " failed: " + (body.message || body.error || "HTTP " + response.status);
    } catch (error) {
      note.textContent = label + " " + taskId + " failed: the status server does not answer.";
    }
    refresh();
  }

  function setUpActions() {
    if (!actionsEnabled) return;
    const input = byId("token");
    input.value = token();
    byId("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      try {
        sessionStorage.setItem(TOKEN_KEY, input.value);
      } catch (error) {
        // storage refused (private mode): the value stays in the field
      }
      byId("action-result").textContent = input.value ? "Token set for this tab." : "Token cleared.";
    });
  }

  // Redraw at once for a new width (the chart is drawn to its container's width in pixels).
  let resizePending = false;
  window.addEventListener("resize", () => {
    if (resizePending || lastDoc === null) return;
    resizePending = true;
    requestAnimationFrame(() => {
      resizePending = false;
      render(lastDoc);
    });
  });

  setUpActions();
  loop();
})();
