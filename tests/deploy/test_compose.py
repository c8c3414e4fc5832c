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
    assert {"ecgbridge", "worker", "redis", "postgres", "fhir"} <= set(rendered["services"])
    db = rendered["services"]["worker"]["environment"]["ECGBRIDGE_DATABASE_URL"]
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
    for name, command in (("ecgbridge", ["serve"]), ("worker", ["worker"])):
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
    assert spec["services"]["worker"]["environment"]["ECGBRIDGE_HEALTHCHECK"] == "worker"
    ports = spec["services"]["ecgbridge"]["ports"]
    assert any(p.endswith(":2575") for p in ports) and any(p.endswith(":8080") for p in ports)
    assert spec["services"]["fhir"]["profiles"] == ["fhir"]
    assert "healthcheck" in spec["services"]["postgres"]
