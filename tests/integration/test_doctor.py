"""`run_doctor`: a bad database URL, an unreachable database, a missing FHIR server and
missing production keys each give one plain-words failure; a healthy setup passes."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from integration.audit.config import AuditSettings
from integration.doctor import Status, check_broker, check_database, check_fhir, run_doctor
from integration.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthy_embedded_defaults(tmp_path: Path) -> None:
    checks = run_doctor(
        Settings(data_dir=tmp_path / "var", out_dir=tmp_path / "out"),
        audit=AuditSettings(data_dir=tmp_path, environment="development"),
        verify_weights=lambda: "ab" * 32,
    )
    assert all(c.ok for c in checks), [c.line() for c in checks]
    assert {c.name for c in checks} == {
        "database",
        "broker",
        "fhir",
        "model",
        "data dir",
        "out dir",
        "keys",
    }
    assert next(c for c in checks if c.name == "fhir").status is Status.SKIP


def test_bad_database_url_says_so(tmp_path: Path) -> None:
    check = check_database(Settings(data_dir=tmp_path, database_url="not a url"))
    assert check.status is Status.FAIL
    assert "ECGBRIDGE_DATABASE_URL is not a database URL" in check.message


def test_unreachable_database_names_host_without_password(tmp_path: Path) -> None:
    port = _free_port()
    url = f"postgresql://ecg:s3cret@127.0.0.1:{port}/ecgbridge"
    check = check_database(Settings(data_dir=tmp_path, database_url=url))
    assert check.status is Status.FAIL
    assert f"cannot connect to the database at postgresql://ecg:***@127.0.0.1:{port}" in (
        check.message
    )
    assert "s3cret" not in check.message
    assert "Is the server running" in check.message


def test_missing_fhir_server(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_free_port()}/fhir/R4"
    check = check_fhir(Settings(data_dir=tmp_path, fhir_base_url=base, fhir_timeout_s=2))
    assert check.status is Status.FAIL
    assert check.message.startswith(f"cannot reach the FHIR server at {base}/metadata")


def test_fhir_server_that_is_not_r4(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/fhir/metadata"
        return httpx.Response(
            200, json={"resourceType": "CapabilityStatement", "fhirVersion": "5.0.0"}
        )

    settings = Settings(data_dir=tmp_path, fhir_base_url="http://ehr.test/fhir")
    check = check_fhir(settings, transport=httpx.MockTransport(handler))
    assert check.status is Status.FAIL and "FHIR 5.0.0" in check.message

    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"}
        )

    assert check_fhir(settings, transport=httpx.MockTransport(ok)).status is Status.OK


def test_unreachable_redis(tmp_path: Path) -> None:
    port = _free_port()
    check = check_broker(Settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{port}/0"))
    assert check.status is Status.FAIL
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in check.message


def test_production_without_keys_and_bad_weights(tmp_path: Path) -> None:
    def broken() -> str:
        raise RuntimeError("weights x.pt: sha256 does not match its meta")

    checks = {
        c.name: c
        for c in run_doctor(
            Settings(data_dir=tmp_path),
            audit=AuditSettings(data_dir=tmp_path, environment="production"),
            verify_weights=broken,
        )
    }
    assert checks["keys"].status is Status.FAIL
    assert "no audit signing key at" in checks["keys"].message
    assert checks["model"].status is Status.FAIL
    assert "sha256 does not match" in checks["model"].message
    assert checks["keys"].line().startswith("[FAIL] keys: ")


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    checks = {
        c.name: c
        for c in run_doctor(
            Settings(data_dir=blocker / "var", out_dir=tmp_path / "out"),
            audit=AuditSettings(data_dir=tmp_path, environment="development"),
            verify_weights=lambda: "ab" * 32,
        )
    }
    assert checks["data dir"].status is Status.FAIL
    assert "is not writable" in checks["data dir"].message
