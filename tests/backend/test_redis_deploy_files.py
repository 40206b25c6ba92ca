"""Static checks of the Redis deployment files: deploy/compose.scale.yaml (through ``docker
compose config``), deploy/k8s/redis/ (``kubernetes-validate --strict`` and the decided settings)
and deploy/redis/Dockerfile (hadolint). No Docker engine is needed; a missing tool skips, and
fails under CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_REDIS = REPO / "deploy" / "k8s" / "redis"
TOOL_TIMEOUT_S = 120


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        message = f"{name} not found"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert found is not None
    return found


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )


def _documents() -> dict[str, dict[str, Any]]:
    """kind/name → manifest, for every document under deploy/k8s/redis/."""
    docs = {}
    for path in sorted(K8S_REDIS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def test_the_redis_k8s_manifests_pass_strict_schema_validation() -> None:
    manifests = sorted(str(path) for path in K8S_REDIS.glob("*.yaml"))
    result = _run([_tool("kubernetes-validate"), "--strict", *manifests])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(_documents())


def test_three_restricted_daemons_on_the_redis_service_with_a_disruption_budget() -> None:
    docs = _documents()
    daemon = docs["Deployment/tracemind"]["spec"]
    redis = docs["StatefulSet/tracemind-redis"]["spec"]
    service = docs["Service/tracemind-redis"]["spec"]
    budget = docs["PodDisruptionBudget/tracemind"]["spec"]
    assert daemon["replicas"] == 3
    assert budget["selector"] == daemon["selector"] and budget["maxUnavailable"] == 1
    (container,) = daemon["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    # the queue URL names the Redis Service and its port; both sides read one Secret
    assert (
        env["TM_QUEUE_URL"]["value"] == f"redis://tracemind-redis:{service['ports'][0]['port']}/0"
    )
    assert service["selector"] == redis["selector"]["matchLabels"]
    (server,) = redis["template"]["spec"]["containers"]
    server_env = {e["name"]: e for e in server["env"]}
    secret = env["TM_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert server_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == secret
    assert "$(REDIS_PASSWORD)" in server["args"]
    # nothing acknowledged lost, nothing evicted
    args = server["args"]
    assert args[args.index("--appendfsync") + 1] == "always"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    # the daemons keep no data volume; every container is restricted and probed
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    for pod, each in ((daemon, container), (redis, server)):
        assert pod["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        security = each["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(each)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_redis_admits_only_the_daemons() -> None:
    policy = _documents()["NetworkPolicy/tracemind-redis"]["spec"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tracemind"}}}
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


def _compose_scale(env: dict[str, str]) -> dict[str, Any]:
    docker = shutil.which("docker")
    if docker is None or _run([docker, "compose", "version"]).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("the docker compose v2 plugin is not installed")
        pytest.skip("the docker compose v2 plugin is not installed")
    assert docker is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TM_", "COMPOSE_"))}
    args = [docker, "compose", "--env-file", os.devnull, "--project-directory", str(REPO)]
    args += ["-f", "compose.yaml", "-f", "deploy/compose.scale.yaml", "--profile", "scale"]
    checked = _run([*args, "config", "-q"], env={**clean, **env})
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr
    result = _run([*args, "config", "--format", "json"], env={**clean, **env})
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_the_compose_scale_override_puts_the_queue_in_redis_and_nothing_on_the_host() -> None:
    config = _compose_scale({})
    daemon, redis = config["services"]["tracemind"], config["services"]["redis"]
    assert daemon["environment"]["TM_QUEUE_URL"] == "redis://redis:6379/0"
    assert "TM_STATUS_PUBLISHED_URL" not in daemon["environment"]  # (one per replica)
    assert [v["target"] for v in daemon["volumes"]] == ["/app"]
    # replicas can scale: no fixed host port, loopback only
    assert [(p["host_ip"], p.get("published")) for p in daemon["ports"]] == [("127.0.0.1", None)]
    assert daemon["depends_on"]["redis"]["condition"] == "service_healthy"
    assert redis["image"] == "redis:7-bookworm"
    assert redis["command"][redis["command"].index("--appendfsync") + 1] == "always"
    assert [(p["host_ip"], p["published"]) for p in redis["ports"]] == [("127.0.0.1", "6379")]
    assert redis["volumes"][0]["type"] == "volume" and "healthcheck" in redis


def test_the_redis_image_and_port_come_from_variables() -> None:
    config = _compose_scale({"TM_REDIS_IMAGE": "tracemind-redis:local", "TM_REDIS_PORT": "16379"})
    redis = config["services"]["redis"]
    assert redis["image"] == "tracemind-redis:local"
    assert redis["ports"][0]["published"] == "16379"


def test_the_local_redis_image_is_hadolint_clean() -> None:
    result = _run([_tool("hadolint"), str(REPO / "deploy" / "redis" / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr
