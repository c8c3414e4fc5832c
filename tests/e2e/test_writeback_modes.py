"""Write-back modes on real servers, through the whole service: `ecgbridge serve --worker`
(embedded broker, SQLite inbox) with explanations on, so every ECG is written twice
(preliminary, then final), and an ECG sent over MLLP from this process.

* ``transaction``: the Medplum-based FHIR server (profiles enforced) keeps one
  DiagnosticReport with two versions and all its Observations; a transaction it refuses is a
  permanent `WriteBackError` carrying its OperationOutcome.
* ``hl7v2``: a separate MLLP peer process (`tests.support.v2_peer`) receives the P then the
  F result message; an AE is retried; an AR dead-letters the ECG.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from inference.analyzer import Analyzer
from integration.errors import WriteBackError
from integration.mllp_client import MllpClient, ack_code
from integration.pipeline import report_identity
from integration.samples import Sample, load_samples
from integration.writeback import FhirServerWriter, FhirTransactionWriter
from mappers.fhir_device import model_card_id, model_device_id
from mappers.fhir_r4 import build_report, resource_json
from mappers.hl7v2 import build_oru_r01
from mappers.hl7v2_result_out import result_control_id
from tests.support.fhir_server import FhirServerProcess
from tests.support.processes import EcgbridgeServe, wait_until
from tests.support.stack import ecgbridge_stack
from tests.support.v2_peer import V2Peer

pytestmark = pytest.mark.e2e
PROFILES_DIR = Path(__file__).resolve().parents[2] / "mappers" / "profiles"


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return load_samples()


@pytest.fixture(scope="module")
def model_version() -> str:
    return Analyzer.load(device="cpu").model_version


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirServerProcess]:
    with FhirServerProcess(profiles_dir=PROFILES_DIR) as server:
        yield server


def _send(serve: EcgbridgeServe, sample: Sample, tag: str) -> str:
    """Send `sample` as an ORU^R01 over MLLP; its inbox key."""
    control_id = tag + datetime.now(UTC).strftime("%H%M%S%f")
    message = build_oru_r01(sample.record, control_id=control_id, now=datetime.now(UTC))
    with MllpClient("127.0.0.1", serve.mllp_port) as client:
        assert ack_code(client.send(message)) == "AA"
    return f"hl7:WARD|{control_id}"


def _status(serve: EcgbridgeServe, key: str) -> dict[str, Any]:
    resp = httpx.get(f"{serve.http_url}/ecg", params={"key": key}, timeout=5)
    return resp.json() if resp.status_code == 200 else {}


def _wait_status(serve: EcgbridgeServe, key: str, status: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        assert serve.alive(), serve.log_tail()
        found.update(_status(serve, key))
        return found.get("status") == status

    wait_until(reached, timeout_s=180, what=f"{key} {status}", interval_s=0.25)
    return found


# ------------------------------------------------------------------------- transaction


def test_transaction_mode_writes_preliminary_then_final(
    fhir: FhirServerProcess, samples: list[Sample], model_version: str, tmp_path: Path
) -> None:
    with ecgbridge_stack(
        tmp_path,
        broker="embedded",
        writeback_mode="transaction",
        fhir_base_url=fhir.base_url,
        explain="true",
    ) as stack:
        key = _send(stack.serve, samples[0], "TX")
        item = _wait_status(stack.serve, key, "done")
    report_id = report_identity(key, model_version)
    assert item["report"].startswith(f"DiagnosticReport/{report_id}/_history/")
    base = fhir.base_url
    history = httpx.get(f"{base}/DiagnosticReport/{report_id}/_history", timeout=5).json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["final", "preliminary"]
    report = history["entry"][0]["resource"]
    assert item["report"].endswith(f"/_history/{report['meta']['versionId']}")
    assert "ecg-explanation" in str(report["extension"])
    refs = [r["reference"] for r in report["result"]]
    assert f"Observation/{report_id}-triage" in refs
    for ref in refs:
        assert httpx.get(f"{base}/{ref}", timeout=5).status_code == 200, ref
    prov = httpx.get(f"{base}/Provenance/{report_id}-provenance", timeout=5)
    assert prov.status_code == 200
    _assert_model_and_audit(base, report_id, model_version, prov.json())


def _assert_model_and_audit(
    base: str, report_id: str, model_version: str, provenance: dict[str, Any]
) -> None:
    """The model's Device and model card are on the server, written once (one version), the
    Provenance's author is the Device, and each write (preliminary, final) has its
    AuditEvent naming the report."""
    device_ref = f"Device/{model_device_id(model_version)}"
    card_ref = f"DocumentReference/{model_card_id(model_version)}"
    assert provenance["agent"][0]["who"]["reference"] == device_ref
    for ref in (device_ref, card_ref):
        history = httpx.get(f"{base}/{ref}/_history", timeout=5).json()
        assert len(history["entry"]) == 1, ref
    device = httpx.get(f"{base}/{device_ref}", timeout=5).json()
    assert device["version"] == [{"value": model_version}]
    assert device["extension"][0]["valueReference"]["reference"] == card_ref
    card = httpx.get(f"{base}/{card_ref}", timeout=5).json()
    assert card["content"][0]["attachment"]["contentType"] == "text/markdown"
    for status in ("preliminary", "final"):
        audit = httpx.get(f"{base}/AuditEvent/{report_id}-audit-{status}", timeout=5)
        assert audit.status_code == 200, audit.text
        entity = audit.json()["entity"][0]
        assert entity["what"]["reference"] == f"DiagnosticReport/{report_id}"
        assert audit.json()["agent"][0]["who"]["reference"] == device_ref


def test_put_mode_writes_the_model_once_and_an_audit_event_per_write(
    fhir: FhirServerProcess, samples: list[Sample], model_version: str
) -> None:
    """`FhirServerWriter` (the ``put`` mode) against the real server: preliminary then final
    by one writer, then the final again by a second writer (another worker process): the
    Device and model card are PUT by each writer once, and the server keeps what it got."""
    record = samples[2].record
    result = Analyzer.load(device="cpu").analyze(record)
    now = datetime.now(UTC)
    report_id = f"ecg-put-{now.strftime('%H%M%S%f')}"
    prelim = build_report(result, record, report_id=report_id, issued=now, preliminary=True)
    final = build_report(result, record, report_id=report_id, issued=now)
    writer = FhirServerWriter(fhir.base_url, timeout_s=10)
    writer.write(prelim)
    writer.write(final)
    writer.close()
    base = fhir.base_url
    prov = httpx.get(f"{base}/Provenance/{report_id}-provenance", timeout=5).json()
    device_ref = f"Device/{model_device_id(model_version)}"
    # one version, whether this writer or the transaction test's worker wrote it first
    _assert_model_and_audit(base, report_id, model_version, prov)
    second = FhirServerWriter(fhir.base_url, timeout_s=10)
    written = second.write(final)
    second.close()
    assert written.report_ref.startswith(f"DiagnosticReport/{report_id}/_history/")
    history = httpx.get(f"{base}/{device_ref}/_history", timeout=5).json()
    assert len(history["entry"]) == 1  # read, found equal, not written again


def test_transaction_refused_by_the_server_is_permanent(
    fhir: FhirServerProcess, samples: list[Sample]
) -> None:
    """A report that breaks the project's profile (no AIAST label): the server refuses the
    transaction; the writer says so, with the server's words, and no retry would help."""
    result = Analyzer.load(device="cpu").analyze(samples[1].record)
    resources = build_report(
        result, samples[1].record, report_id="ecg-refused", issued=datetime.now(UTC)
    )
    data = resource_json(resources.diagnostic_report)
    data["meta"]["security"] = [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}
    ]
    bad = replace(resources, diagnostic_report=DiagnosticReport.model_validate(data))
    writer = FhirTransactionWriter(fhir.base_url, timeout_s=10)
    with pytest.raises(WriteBackError) as err:
        writer.write(bad)
    writer.close()
    assert err.value.transient is False
    assert err.value.status is not None and 400 <= err.value.status < 500
    assert "DiagnosticReport.meta.security" in str(err.value)
    assert "aiast" in str(err.value)


# ------------------------------------------------------------------------------- hl7v2


@pytest.fixture(scope="module")
def v2_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EcgbridgeServe, V2Peer]]:
    tmp = tmp_path_factory.mktemp("v2")
    with (
        V2Peer(tmp / "peer") as peer,
        ecgbridge_stack(
            tmp,
            broker="embedded",
            writeback_mode="hl7v2",
            v2_result_host="127.0.0.1",
            v2_result_port=str(peer.port),
            v2_result_receiving_application="EHR",
            explain="true",
        ) as stack,
    ):
        yield stack.serve, peer


def _messages(peer: V2Peer, report_id: str) -> list[tuple[str, str]]:
    """(status, ACK code) of the result messages of one report, in arrival order."""
    ids = {result_control_id(report_id, "P"): "P", result_control_id(report_id, "F"): "F"}
    return [(ids[r["control_id"]], r["code"]) for r in peer.received() if r["control_id"] in ids]


def test_hl7v2_mode_delivers_preliminary_then_final(
    v2_stack: tuple[EcgbridgeServe, V2Peer], samples: list[Sample], model_version: str
) -> None:
    serve, peer = v2_stack
    sample = samples[0]
    key = _send(serve, sample, "V2A")
    item = _wait_status(serve, key, "done")
    report_id = report_identity(key, model_version)
    assert item["report"] == f"DiagnosticReport/{report_id}"
    assert _messages(peer, report_id) == [("P", "AA"), ("F", "AA")]
    final = next(
        r["message"]
        for r in peer.received()
        if r["control_id"] == result_control_id(report_id, "F")
    )
    segs = {s.split("|")[0]: s.split("|") for s in final.split("\r")}
    assert segs["MSH"][4] == "EHR"
    assert segs["OBR"][3] == sample.record.record_id
    assert sample.record.patient is not None
    assert segs["PID"][3] == sample.record.patient.value
    assert "EXPLANATION^AI explanation^99ECGB" in final


def test_hl7v2_mode_retries_an_ae(
    v2_stack: tuple[EcgbridgeServe, V2Peer], samples: list[Sample], model_version: str
) -> None:
    serve, peer = v2_stack
    peer.queue("AE")
    key = _send(serve, samples[1], "V2B")
    _wait_status(serve, key, "done")
    report_id = report_identity(key, model_version)
    assert _messages(peer, report_id) == [("P", "AE"), ("P", "AA"), ("F", "AA")]


def test_hl7v2_mode_dead_letters_an_ar(
    v2_stack: tuple[EcgbridgeServe, V2Peer], samples: list[Sample], model_version: str
) -> None:
    serve, peer = v2_stack
    peer.queue("AR")
    key = _send(serve, samples[2], "V2C")
    item = _wait_status(serve, key, "dead_letter")
    report_id = report_identity(key, model_version)
    assert _messages(peer, report_id) == [("P", "AR")]
    assert "answered AR" in (item["error"] or "")
