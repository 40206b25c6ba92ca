"""The test command on a fresh machine: .ci/run and scripts/ci/docker-engine.sh accept a non-root
user whose Docker engine already answers (they install nothing then), and refuse, with one line,
one whose engine they would have to start; the README names the commands that really work."""

from __future__ import annotations

import grp
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.container]

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
SOCKET = Path("/var/run/docker.sock")


def _as_nobody(tmp_home: Path, groups: list[int]) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}"]
    prefix += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_home),
        "TMPDIR": str(tmp_home),
        **{k: v for k, v in os.environ.items() if k in ("TM_BASE_IMAGE", "TM_BUILD_NETWORK")},
    }
    return subprocess.run(
        [*prefix, "bash", str(REPO / "scripts" / "ci" / "docker-engine.sh"), "--print-env"],
        env=env,
        cwd=tmp_home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docker_engine_script_runs_as_a_user_whose_docker_works(shared_tmp: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not SOCKET.exists():
        pytest.skip("needs root (to act as another user), setpriv and a local engine socket")
    if not os.environ.get("TM_BASE_IMAGE"):
        pytest.skip("needs TM_BASE_IMAGE (a local base image) so that nothing is pulled")
    script = REPO / "scripts" / "ci" / "docker-engine.sh"
    readable = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "test", "-r",
         str(script)], check=False,
    )  # fmt: skip
    if readable.returncode != 0:
        pytest.skip("this checkout is not readable by another user (e.g. cloned into a 0700 dir)")
    plugin = shutil.which("docker-compose") or str(
        Path.home() / ".docker" / "cli-plugins" / "docker-compose"
    )
    if not Path(plugin).exists():
        pytest.skip("the compose plugin is not where this user can copy it from")
    # Given a user with the compose plugin in its home, once without and once with the socket's
    # group (what "Docker already works" means for a non-root user)
    home = shared_tmp / "home"  # (pytest's tmp_path is 0700: another user cannot enter it)
    (home / ".docker" / "cli-plugins").mkdir(parents=True)
    shutil.copy(plugin, home / ".docker" / "cli-plugins" / "docker-compose")
    for path in [home, *home.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)

    # When it cannot reach the engine: one line saying that starting one needs root
    refused = _as_nobody(home, [])
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "starting dockerd needs root" in refused.stderr and refused.stdout == ""

    # When it can: every step is found done, and the exports are printed
    allowed = _as_nobody(home, [SOCKET.stat().st_gid])
    assert allowed.returncode == 0, allowed.stderr
    exports = dict(re.findall(r"^export (\w+)=(.*)$", allowed.stdout, flags=re.MULTILINE))
    assert exports["TM_BASE_IMAGE"] == os.environ["TM_BASE_IMAGE"]
    assert "skipped" in allowed.stderr and "needs root" not in allowed.stderr
    assert grp.getgrgid(SOCKET.stat().st_gid)  # a real group, not a leftover id


def test_readme_names_commands_that_set_up_what_they_need() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    two = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", two, flags=re.DOTALL)
    assert blocks[0].strip() == "docker compose up -d --wait"
    assert blocks[1].strip() == ".ci/run"
    # The inner loop comes with the line that installs its tools.
    assert "pip install -e '.[status]' --group test" in blocks[2]
    assert "scripts/test" in blocks[2]
    ci_run = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "--group test" in ci_run and "/usr/bin/python3" in ci_run
    assert ".venv-ci/" in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
