"""deploy/compose.yaml: parsed and checked here; `docker compose config` (or the
`docker-compose` v1 client) validates it too when a client is installed (no engine needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV = {"POSTGRES_PASSWORD": "test-password", "PATH": os.environ.get("PATH", "")}
#: The worker services and their `ecgbridge worker --queues` choice.
WORKERS = {"worker-triage": "triage", "worker-explain": "explain"}


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no docker compose client (docker compose plugin or docker-compose)")
    proc = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "config"], capture_output=True, env=ENV, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = yaml.safe_load(proc.stdout)
    assert isinstance(out, dict)
    return out


def test_compose_config_validates(rendered: dict[str, Any]) -> None:
    services = set(rendered["services"])
    assert {"ecgbridge", *WORKERS, "redis", "postgres", "fhir"} <= services
    for name in WORKERS:
        db = rendered["services"][name]["environment"]["ECGBRIDGE_DATABASE_URL"]
        assert db == "postgresql://ecgbridge:test-password@postgres:5432/ecgbridge"


def test_compose_refuses_a_missing_password() -> None:
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no docker compose client")
    env = {"PATH": ENV["PATH"]}
    proc = subprocess.run([*cmd, "-f", str(COMPOSE), "config"], capture_output=True, env=env)
    assert proc.returncode != 0
    assert b"POSTGRES_PASSWORD" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    out = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(out, dict)
    return out


def test_redis_persists_and_never_evicts(spec: dict[str, Any]) -> None:
    cmd = [str(c) for c in spec["services"]["redis"]["command"]]
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert any(
        v["target"] == "/data" if isinstance(v, dict) else v.endswith(":/data")
        for v in spec["services"]["redis"]["volumes"]
    )


def test_services_wired_to_redis_postgres_and_keys(spec: dict[str, Any]) -> None:
    commands = {"ecgbridge": ["serve"]} | {
        name: ["worker", "--queues", queues] for name, queues in WORKERS.items()
    }
    for name, command in commands.items():
        svc = spec["services"][name]
        assert svc["command"] == command
        env = svc["environment"]
        assert env["ECGBRIDGE_BROKER_URL"] == "redis://redis:6379/0"
        assert env["ECGBRIDGE_DATABASE_URL"].startswith("postgresql://ecgbridge:")
        assert "@postgres:5432/ecgbridge" in env["ECGBRIDGE_DATABASE_URL"]
        assert env["ECGBRIDGE_AUDIT_KEY_FILE"] == "/run/secrets/audit_key"
        assert env["ECGBRIDGE_PHI_KEY_FILE"] == "/run/secrets/phi_keys"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    for name in WORKERS:
        assert spec["services"][name]["environment"]["ECGBRIDGE_HEALTHCHECK"] == "worker"
    ports = spec["services"]["ecgbridge"]["ports"]
    assert any(p.endswith(":2575") for p in ports) and any(p.endswith(":8080") for p in ports)
    assert spec["services"]["fhir"]["profiles"] == ["fhir"]
    assert "healthcheck" in spec["services"]["postgres"]


def test_one_worker_service_per_queue_same_image_env_and_volumes(spec: dict[str, Any]) -> None:
    """Triage (queue `ecgbridge`, alerts) and explain (`ecgbridge-explain`) run apart, so an
    explanation backlog never delays an alert; otherwise the two services are the same."""
    from integration.cli import _parser

    services = spec["services"]
    assert "worker" not in services  # no worker on both queues beside the dedicated ones
    workers = {n: s for n, s in services.items() if s.get("command", [None])[0] == "worker"}
    assert set(workers) == set(WORKERS)
    for name, queues in WORKERS.items():
        assert _parser().parse_args(workers[name]["command"]).queues == queues
    triage, explain = services["worker-triage"], services["worker-explain"]
    same = ("image", "build", "secrets", "volumes", "read_only", "cap_drop", "depends_on")
    for key in same:
        assert triage[key] == explain[key], key
    env_t, env_e = dict(triage["environment"]), dict(explain["environment"])
    for env in (env_t, env_e):
        env.pop("ECGBRIDGE_WORKER_CONCURRENCY")
    assert env_t == env_e
