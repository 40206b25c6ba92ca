"""Figure 15 — the Redis backend against RQ on the same Redis (``python -m bench --redis``).

Each round starts a fresh ``redis-server`` per measurement (127.0.0.1, a free port, AOF with
``appendfsync always``: nothing acknowledged is lost on either side; one server binary for
both sides) and measures, interleaved, with N tasks (``Sizes.redis_tasks``, 10,000):

- per-task enqueue, in loop: ours ``submit`` once per task vs RQ's ``Queue.enqueue`` (goal: ratio ≥ 1);
- our batch enqueue of N tasks (one ``submit_many``), in loop (no RQ counterpart);
- the drain of N pre-seeded no-op tasks by **2 daemons x 2 workers** (real ``tm daemon start``
  processes, a state dir each, one ``TM_QUEUE_URL``), from spawning the daemons to the last task
  succeeded (their logs), against 4 ``rq worker --burst`` with RQ's defaults (a forked work horse
  per job), from spawning them to the last job ended (RQ's own job records) (goal: ratio ≥ 2);
  the same drain on the file backend by 1 daemon x 4 workers on one data dir (a file queue is
  served by one daemon per host: it scales with ``--workers``, docs/deployment.md);
- the same drain by 4 processes running the backend's lease + ack loop directly
  (``children/ours_redis.py consume``, spawn to exit): the backend without the daemon;
- ``tm enqueue`` cold start on a Redis location against ``python3 -c pass`` (goal: ≤ 3 times).

RQ (latest) lives in ``bench/.venv-rq``, made on first use like Huey's. The figure is skipped
with a note where ``redis-server`` is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.context import Context
from bench.core import BenchError, FigureResult, Goal, Row, median, paired_ratio
from bench.daemons import drain_with_daemons
from bench.env import (
    BENCH_DIR,
    CHILDREN_DIR,
    CompetitorUnavailable,
    base_interpreter,
    last_json,
    ours_env,
    plain_env,
    run_timed,
    version_of,
)
from bench.workload import write_inputs, write_noop_flow

RQ_VENV = BENCH_DIR / ".venv-rq"
TIMEOUT_S = 600.0
CONSUMERS = 4
DAEMONS, DAEMON_WORKERS = 2, 2
FILE_WORKERS = 4
COLD_SAMPLES_PER_ROUND = 4
START_TIMEOUT_S = 20.0


class RedisServer:
    """A throwaway ``redis-server`` (AOF, ``appendfsync always``) in ``directory``."""

    def __init__(self, binary: str, directory: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError("redis-server did not start")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def ensure_rq() -> tuple[str, str]:
    """``bench/.venv-rq`` with the latest RQ (made if needed): its python and ``rq`` script."""
    python, script = RQ_VENV / "bin" / "python", RQ_VENV / "bin" / "rq"
    probe = [str(python), "-c", "import rq"]
    if python.exists() and subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
        return str(python), str(script)
    print("bench: installing RQ (latest from PyPI) into bench/.venv-rq …", file=sys.stderr)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    for step in (
        [base_interpreter(), "-m", "venv", "--clear", str(RQ_VENV)],
        [*pip, "install", "--quiet", "--upgrade", "rq"],
    ):
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise CompetitorUnavailable(f"`{' '.join(step[-3:])}` failed: {' / '.join(tail)}")
    return str(python), str(script)


def _spawn_all(argvs: list[list[str]], env: dict[str, str]) -> tuple[float, float]:
    """(epoch seconds at the spawn, seconds from spawning every command to the exit of the
    last); each must exit 0."""
    started_epoch_s = time.time()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for argv in argvs
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=TIMEOUT_S)
            if proc.returncode != 0:
                raise BenchError(f"{argvs[0][:3]} exited {proc.returncode}: {err[-500:]!r}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    return started_epoch_s, time.perf_counter() - started


class Round:
    """One round's measurements, each on a fresh ``redis-server`` (or data dir)."""

    def __init__(self, ctx: Context, binary: str, flow: Path, inputs: Path, n: int) -> None:
        self.ctx, self.binary, self.flow, self.inputs, self.n = ctx, binary, flow, inputs, n
        self.python = ctx.programs.python
        self.script = str(CHILDREN_DIR / "ours_redis.py")
        self.env = plain_env()

    def server(self, prefix: str) -> RedisServer:
        return RedisServer(self.binary, self.ctx.new_dir(prefix))

    def ours_enqueue(self) -> tuple[float, float]:
        """(per-task tasks/s, batch tasks/s), in one process."""
        server = self.server("redis-ours-")
        try:
            argv = [self.python, self.script, "enqueue", server.url, str(self.flow), str(self.n)]
            done = run_timed(argv, env=self.env, timeout_s=TIMEOUT_S, capture=True)
        finally:
            server.stop()
        report = last_json(done.stdout)
        return float(report["rate"]), float(report["batch_rate"])

    def ours_daemons(self) -> float:
        """Seconds from spawning 2 daemons x 2 workers to the last task succeeded."""
        server = self.server("redis-daemons-")
        try:
            env = {**self.env, "TM_ENABLE_DAEMON": "1", "TM_QUEUE_URL": server.url}
            return self._daemon_drain(env, DAEMONS, DAEMON_WORKERS)
        finally:
            server.stop()

    def file_daemon(self) -> float:
        """Seconds from spawning 1 daemon x 4 workers on a data dir to the last task durable."""
        env = {**ours_env(self.ctx.new_dir("file-data-")), "TM_ENABLE_DAEMON": "1"}
        return self._daemon_drain(env, 1, FILE_WORKERS)

    def _daemon_drain(self, env: dict[str, str], daemons: int, workers: int) -> float:
        tm = self.ctx.programs.tm
        seed = [tm, "enqueue", str(self.flow), "--inputs", str(self.inputs)]
        run_timed(seed, env=env, timeout_s=TIMEOUT_S)
        work = self.ctx.new_dir("daemons-")
        drained = drain_with_daemons(
            tm, env, work, daemons=daemons, workers=workers, tasks=self.n, timeout_s=TIMEOUT_S
        )
        return drained.spawn_to_done_s

    def ours_loop(self) -> float:
        """Seconds from spawning 4 lease + ack loops to the exit of the last."""
        server = self.server("redis-loop-")
        try:
            seed = [self.python, self.script, "seed", server.url, str(self.flow), str(self.n)]
            run_timed(seed, env=self.env, timeout_s=TIMEOUT_S)
            consumers = [
                [self.python, self.script, "consume", server.url, f"bench-{i}"]
                for i in range(CONSUMERS)
            ]
            return _spawn_all(consumers, self.env)[1]
        finally:
            server.stop()

    def rq(self, rq_python: str, rq_script: str) -> tuple[float, float, float]:
        """(per-task enqueue tasks/s, seconds from spawning 4 workers to the last job ended,
        seconds from spawning them to the exit of the last)."""
        rq_env = {**self.env, "PYTHONPATH": str(CHILDREN_DIR)}
        app = str(CHILDREN_DIR / "rq_app.py")
        server = self.server("redis-rq-")
        try:
            done = run_timed(
                [rq_python, app, server.url, str(self.n)],
                env=rq_env,
                timeout_s=TIMEOUT_S,
                capture=True,
            )
            rate = float(last_json(done.stdout)["rate"])
            workers = [[rq_script, "worker", "--burst", "--url", server.url, "-q"]] * CONSUMERS
            started_s, exit_s = _spawn_all(workers, rq_env)
            done = run_timed(
                [rq_python, app, "last", server.url], env=rq_env, timeout_s=120, capture=True
            )
        finally:
            server.stop()
        report = last_json(done.stdout)
        if report["finished"] != self.n:
            raise BenchError(f"rq drain: {report['finished']} of {self.n} jobs finished")
        return rate, float(report["last_ended_s"]) - started_s, exit_s

    def cold_start(self, samples: int) -> tuple[list[float], list[float]]:
        """``tm enqueue`` on a Redis location and ``python3 -c pass``, alternately: ms each
        (the flow cached, as for a script that enqueues one flow over and over)."""
        server = self.server("redis-cold-")
        work = self.ctx.new_dir("redis-cold-work-")
        env = {**self.env, "TM_QUEUE_URL": server.url, "XDG_CACHE_HOME": str(work)}
        enqueue = [self.ctx.programs.tm, "enqueue", str(self.flow), "-i", '{"i":1}']
        bare = [self.python, "-c", "pass"]
        ours_ms: list[float] = []
        bare_ms: list[float] = []
        try:
            run_timed(enqueue, env=env, timeout_s=60)  # warm: the flow cache, the .pyc files
            run_timed(bare, env=env, timeout_s=60)
            for _ in range(samples):
                ours_ms.append(1000 * run_timed(enqueue, env=env, timeout_s=60).elapsed_s)
                bare_ms.append(1000 * run_timed(bare, env=env, timeout_s=60).elapsed_s)
        finally:
            server.stop()
        return ours_ms, bare_ms


KEYS = (
    "ours enqueue",
    "rq enqueue",
    "ours batch",
    "ours daemons s",
    "file daemon s",
    "ours loop s",
    "rq drain s",
    "rq exit s",
    "cold ms",
    "bare ms",
)


def run(ctx: Context) -> FigureResult:
    n = ctx.sizes.redis_tasks
    result = FigureResult(15, "redis", f"Redis backend vs RQ, {n:,} tasks")
    binary = shutil.which("redis-server")
    if binary is None:
        result.status, result.note = "skipped", "redis-server is not installed"
        return result
    rq_python, rq_script = ensure_rq()
    work = ctx.new_dir("redis-flow-")
    one = Round(ctx, binary, write_noop_flow(work), write_inputs(work, n), n)
    samples: dict[str, list[float]] = {key: [] for key in KEYS}
    for round_no in range(ctx.rounds):
        ctx.say(f"redis: round {round_no + 1}/{ctx.rounds}")
        per_task, batch = one.ours_enqueue()
        samples["ours enqueue"].append(per_task)
        samples["ours batch"].append(batch)
        samples["ours daemons s"].append(one.ours_daemons())
        samples["file daemon s"].append(one.file_daemon())
        samples["ours loop s"].append(one.ours_loop())
        rate, drain_s, exit_s = one.rq(rq_python, rq_script)
        samples["rq enqueue"].append(rate)
        samples["rq drain s"].append(drain_s)
        samples["rq exit s"].append(exit_s)
        cold, bare = one.cold_start(COLD_SAMPLES_PER_ROUND)
        samples["cold ms"] += cold
        samples["bare ms"] += bare
    result.samples = samples
    result.params = {
        "tasks": n,
        "daemons": DAEMONS,
        "workers_per_daemon": DAEMON_WORKERS,
        "file_workers": FILE_WORKERS,
        "rq_workers": CONSUMERS,
        "rq": version_of(rq_python, "rq"),
        "redis_server": _server_version(binary),
        "load_average": list(os.getloadavg()),
    }
    result.values = {f"{key} median": median(s) for key, s in samples.items()}
    result.rows = _rows(samples, n, str(result.params["rq"]))
    return result


def _rows(samples: dict[str, list[float]], n: int, rq_version: str) -> list[Row]:
    rq_label = f"RQ {rq_version}, default settings"
    rq_workers = f"{CONSUMERS} rq worker --burst, RQ {rq_version}"
    drain = f"drain of {n:,}, spawn → last task done"
    rq_drain = median(samples["rq drain s"])
    return [
        Row(
            "per-task enqueue, in loop",
            "tasks/s",
            median(samples["ours enqueue"]),
            median(samples["rq enqueue"]),
            rq_label,
            Goal("ratio", ">=", 1.0),
            paired_ratio=paired_ratio(samples["ours enqueue"], samples["rq enqueue"]),
        ),
        Row("batch enqueue (one submit_many), in loop", "tasks/s", median(samples["ours batch"])),
        Row(
            f"{drain}: {DAEMONS} daemons x {DAEMON_WORKERS} workers on one Redis",
            "tasks/s",
            n / median(samples["ours daemons s"]),
            n / rq_drain,
            rq_workers,
            Goal("ratio", ">=", 2.0),
            paired_ratio=paired_ratio(samples["rq drain s"], samples["ours daemons s"]),
        ),
        Row(
            f"{drain}: file backend, 1 daemon x {FILE_WORKERS} workers",
            "tasks/s",
            n / median(samples["file daemon s"]),
            n / rq_drain,
            rq_workers,
            paired_ratio=paired_ratio(samples["rq drain s"], samples["file daemon s"]),
        ),
        Row(
            f"drain of {n:,} by {CONSUMERS} lease + ack loops (no daemon), spawn → exit",
            "tasks/s",
            n / median(samples["ours loop s"]),
            n / median(samples["rq exit s"]),
            f"{rq_workers}, spawn → exit",
            paired_ratio=paired_ratio(samples["rq exit s"], samples["ours loop s"]),
        ),
        Row(
            "tm enqueue cold start, Redis location",
            "ms",
            median(samples["cold ms"]),
            median(samples["bare ms"]),
            "python3 -c pass",
            Goal("ratio", "<=", 3.0),
            paired_ratio=paired_ratio(samples["cold ms"], samples["bare ms"]),
        ),
    ]


def _server_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    words = [w for w in done.stdout.split() if w.startswith("v=")]
    return words[0][2:] if words else "unknown"
