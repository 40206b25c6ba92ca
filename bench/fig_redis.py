"""Figure 13 — the Redis backend against RQ on the same Redis (``python -m bench --redis``).

Each round starts a fresh ``redis-server`` per side (127.0.0.1, a free port, AOF with
``appendfsync always``: nothing acknowledged is lost on either side) and measures:

- per-task enqueue, in loop: ours ``submit`` once per task vs RQ's ``Queue.enqueue`` (goal: ratio ≥ 1);
- our batch enqueue of N tasks (one ``submit_many``), in loop (no RQ counterpart);
- a drain of N pre-seeded no-op tasks by 4 processes, spawn to exit: ours are 4 processes
  running the backend's lease + ack loop (``children/ours_redis.py consume``), RQ's are 4
  ``rq worker --burst`` with its defaults (a forked work horse per job) (goal: ratio ≥ 2). This is the
  backend's throughput, not yet the daemon's: the daemon reaches Redis through the same
  ``open_backend``.

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
from bench.env import (
    BENCH_DIR,
    CHILDREN_DIR,
    CompetitorUnavailable,
    base_interpreter,
    last_json,
    run_timed,
    version_of,
)

RQ_VENV = BENCH_DIR / ".venv-rq"
TIMEOUT_S = 600.0
CONSUMERS = 4
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


def _spawn_all(argvs: list[list[str]], env: dict[str, str]) -> float:
    """Seconds from spawning every command to the exit of the last (each must exit 0)."""
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
    return time.perf_counter() - started


def _flow(work: Path) -> Path:
    from bench.workload import write_noop_flow

    return write_noop_flow(work)


def run(ctx: Context) -> FigureResult:
    n = ctx.sizes.drain_tasks
    result = FigureResult(13, "redis", f"Redis backend vs RQ, {n:,} tasks (tasks/s)")
    binary = shutil.which("redis-server")
    if binary is None:
        result.status, result.note = "skipped", "redis-server is not installed"
        return result
    rq_python, rq_script = ensure_rq()
    ours_script = str(CHILDREN_DIR / "ours_redis.py")
    ours_env = {k: v for k, v in os.environ.items() if not k.startswith(("TM_", "BENCH_"))}
    rq_env = {**ours_env, "PYTHONPATH": str(CHILDREN_DIR)}
    flow = _flow(ctx.new_dir("redis-flow-"))
    keys = ("ours enqueue", "rq enqueue", "ours batch", "ours drain s", "rq drain s")
    samples: dict[str, list[float]] = {key: [] for key in keys}
    for round_no in range(ctx.rounds):
        ctx.say(f"redis: round {round_no + 1}/{ctx.rounds}")
        server = RedisServer(binary, ctx.new_dir("redis-ours-"))
        try:
            py = ctx.programs.python
            done = run_timed(
                [py, ours_script, "enqueue", server.url, str(flow), str(n)],
                env=ours_env,
                timeout_s=TIMEOUT_S,
                capture=True,
            )
            report = last_json(done.stdout)
            samples["ours enqueue"].append(float(report["rate"]))
            samples["ours batch"].append(float(report["batch_rate"]))
        finally:
            server.stop()
        server = RedisServer(binary, ctx.new_dir("redis-ours-drain-"))
        try:
            seed = [py, ours_script, "seed", server.url, str(flow), str(n)]
            run_timed(seed, env=ours_env, timeout_s=TIMEOUT_S)
            consumers = [
                [py, ours_script, "consume", server.url, f"bench-{i}"] for i in range(CONSUMERS)
            ]
            samples["ours drain s"].append(_spawn_all(consumers, ours_env))
        finally:
            server.stop()
        server = RedisServer(binary, ctx.new_dir("redis-rq-"))
        try:
            done = run_timed(
                [rq_python, str(CHILDREN_DIR / "rq_app.py"), server.url, str(n)],
                env=rq_env,
                timeout_s=TIMEOUT_S,
                capture=True,
            )
            samples["rq enqueue"].append(float(last_json(done.stdout)["rate"]))
            workers = [[rq_script, "worker", "--burst", "--url", server.url, "-q"]] * CONSUMERS
            samples["rq drain s"].append(_spawn_all(workers, rq_env))
        finally:
            server.stop()
    result.samples = samples
    result.params = {"tasks": n, "consumers": CONSUMERS, "rq": version_of(rq_python, "rq")}
    result.values = {f"{key} median": median(s) for key, s in samples.items()}
    rq_label = f"RQ {result.params['rq']}, default settings"
    result.rows = [
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
            f"drain by {CONSUMERS} processes, spawn → exit",
            "tasks/s",
            n / median(samples["ours drain s"]),
            n / median(samples["rq drain s"]),
            f"{CONSUMERS} rq worker --burst",
            Goal("ratio", ">=", 2.0),
            note="ours: the backend's lease + ack loop, not the daemon",
            paired_ratio=paired_ratio(samples["rq drain s"], samples["ours drain s"]),
        ),
    ]
    return result
