"""Write-back modes: the transaction writer (httpx in-memory transport), the HL7 v2 result
writer (an in-process MLLP peer over real sockets), the settings that pick them, and the
doctor's check. The real FHIR server and a peer process are in tests/e2e/test_writeback_modes.py.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from inference.analyzer import Analyzer
from integration.doctor import Status, check_v2_result, run_doctor
from integration.errors import WriteBackError
from integration.samples import load_samples
from integration.settings import Settings
from integration.tasks import make_writer
from integration.writeback import (
    FhirServerWriter,
    FhirTransactionWriter,
    MllpResultWriter,
    NdjsonSink,
)
from mappers.fhir_device import model_card_id, model_device_id
from mappers.fhir_r4 import ReportResources, build_report
from mappers.hl7v2_result_out import result_control_id
from tests.support.processes import free_port
from tests.support.v2_peer import PeerServer

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "invariant",
            "diagnostics": "ecgr-aiast: the AIAST label is required",
            "expression": ["DiagnosticReport.meta"],
        }
    ],
}


@pytest.fixture(scope="module")
def reports() -> dict[str, ReportResources]:
    sample = load_samples()[0]
    result = Analyzer.load(device="cpu").analyze(sample.record, now=NOW)
    return {
        "preliminary": build_report(
            result, sample.record, report_id="ecg-r1", issued=NOW, preliminary=True
        ),
        "final": build_report(result, sample.record, report_id="ecg-r1", issued=NOW),
    }


# ------------------------------------------------------------------------- transaction


def _response(bundle: dict[str, Any], status: str = "200 OK") -> dict[str, Any]:
    entries = []
    for e in bundle["entry"]:
        url = e["request"]["url"]
        entries.append(
            {
                "resource": e["resource"] | {"meta": {"versionId": "2"}},
                "response": {"status": status, "location": f"{url}/_history/2"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


def _transaction_writer(handler: Any) -> FhirTransactionWriter:
    """A writer whose server has not got the model's Device and model card yet (their
    look-ups answer 404); the transactions go to `handler`."""

    def server(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404)
        response: httpx.Response = handler(request)
        return response

    return FhirTransactionWriter(
        "http://ehr/fhir/", timeout_s=5, transport=httpx.MockTransport(server)
    )


def test_transaction_is_one_post_of_put_entries(reports: dict[str, ReportResources]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_response(json.loads(request.content)))

    writer = _transaction_writer(handler)
    written = writer.write(reports["final"])
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", "http://ehr/fhir")
    bundle = json.loads(request.content)
    assert bundle["type"] == "transaction"
    resources = reports["final"]
    # model card, Device, report, observations, AuditEvent, Provenance
    assert len(bundle["entry"]) == len(resources.observations) + 5
    assert {e["request"]["method"] for e in bundle["entry"]} == {"PUT"}
    urls = [e["request"]["url"] for e in bundle["entry"]]
    assert urls[:3] == [
        f"DocumentReference/{model_card_id(resources.model_version)}",
        f"Device/{model_device_id(resources.model_version)}",
        "DiagnosticReport/ecg-r1",
    ]
    assert urls[-2:] == ["AuditEvent/ecg-r1-audit-final", "Provenance/ecg-r1-provenance"]
    assert written.report_ref == "DiagnosticReport/ecg-r1/_history/2"
    assert written.location == "http://ehr/fhir/DiagnosticReport/ecg-r1"
    # written once per model: the next transaction carries the report's resources only
    writer.write(reports["final"])
    assert len(json.loads(seen[1].content)["entry"]) == len(resources.observations) + 3


@pytest.mark.parametrize(
    ("status", "transient"), [(400, False), (422, False), (412, False), (429, True), (503, True)]
)
def test_transaction_refused_as_a_whole(
    reports: dict[str, ReportResources], status: int, transient: bool
) -> None:
    writer = _transaction_writer(lambda r: httpx.Response(status, json=OUTCOME))
    with pytest.raises(WriteBackError) as err:
        writer.write(reports["final"])
    assert (err.value.transient, err.value.status) == (transient, status)
    assert "ecgr-aiast: the AIAST label is required (DiagnosticReport.meta)" in str(err.value)


@pytest.mark.parametrize(("status", "transient"), [("422", False), ("500 Server Error", True)])
def test_transaction_entry_error_is_classified_by_its_status(
    reports: dict[str, ReportResources], status: str, transient: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        body = _response(sent)
        n = next(
            i for i, e in enumerate(sent["entry"]) if e["request"]["url"].startswith("Observation/")
        )
        body["entry"][n]["response"] = {"status": status, "outcome": OUTCOME}
        return httpx.Response(200, json=body)

    with pytest.raises(WriteBackError) as err:
        _transaction_writer(handler).write(reports["final"])
    assert err.value.transient is transient
    assert "PUT Observation/ecg-r1-" in str(err.value)
    assert "AIAST label is required" in str(err.value)


@pytest.mark.parametrize(
    "answer",
    [
        lambda r: httpx.Response(200, text="<html>proxy</html>"),
        lambda r: httpx.Response(200, json={"resourceType": "Bundle", "entry": []}),
    ],
)
def test_transaction_without_a_readable_response_is_transient(
    reports: dict[str, ReportResources], answer: Any
) -> None:
    with pytest.raises(WriteBackError) as err:
        _transaction_writer(answer).write(reports["final"])
    assert err.value.transient


def test_transaction_timeout_is_transient(reports: dict[str, ReportResources]) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    with pytest.raises(WriteBackError) as err:
        _transaction_writer(boom).write(reports["final"])
    assert err.value.transient


def test_transaction_version_from_etag(reports: dict[str, ReportResources]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = _response(json.loads(request.content), status="201 Created")
        for e in body["entry"]:
            e["response"] = {"status": "201 Created", "etag": 'W/"7"'}
        return httpx.Response(200, json=body)

    written = _transaction_writer(handler).write(reports["preliminary"])
    assert written.report_ref == "DiagnosticReport/ecg-r1/_history/7"


# ------------------------------------------------------------------------------- hl7v2


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[PeerServer]:
    server = PeerServer(0, record=tmp_path / "received.jsonl", codes=tmp_path / "codes.txt")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _received(peer: PeerServer) -> list[dict[str, Any]]:
    if not peer.record.exists():
        return []
    return [json.loads(x) for x in peer.record.read_text().splitlines()]


def _v2_writer(port: int) -> MllpResultWriter:
    return MllpResultWriter(
        "127.0.0.1",
        port,
        timeout_s=5,
        receiving_application="EHR",
        backoff_s=0.0,
        clock=lambda: NOW,
    )


def test_v2_preliminary_then_final(peer: PeerServer, reports: dict[str, ReportResources]) -> None:
    writer = _v2_writer(peer.server_address[1])
    first = writer.write(reports["preliminary"])
    second = writer.write(reports["final"])
    writer.close()
    got = _received(peer)
    assert [g["control_id"] for g in got] == [
        result_control_id("ecg-r1", "P"),
        result_control_id("ecg-r1", "F"),
    ]
    obr = [next(s for s in g["message"].split("\r") if s.startswith("OBR")) for g in got]
    assert [o.split("|")[25] for o in obr] == ["P", "F"]
    assert all(g["message"].split("|")[4] == "EHR" for g in got)  # MSH-5
    assert first.report_ref == second.report_ref == "DiagnosticReport/ecg-r1"
    assert second.location.endswith(result_control_id("ecg-r1", "F"))
    # built from the analysis and the ECG themselves: the patient's sex in PID-8
    record = reports["final"].record
    assert record is not None
    pid = next(s for s in got[1]["message"].split("\r") if s.startswith("PID"))
    sex = {"male": "M", "female": "F"}.get(record.demographics.sex.value, "U")
    assert pid.split("|")[8] == sex


@pytest.mark.parametrize(
    ("code", "transient"), [("AE", True), ("CE", True), ("AR", False), ("CR", False)]
)
def test_v2_negative_acks_are_classified(
    peer: PeerServer, reports: dict[str, ReportResources], code: str, transient: bool
) -> None:
    peer.codes.write_text(code)
    writer = _v2_writer(peer.server_address[1])
    with pytest.raises(WriteBackError) as err:
        writer.write(reports["final"])
    assert err.value.transient is transient
    assert f"answered {code}: test peer answers {code}" in str(err.value)
    assert len(_received(peer)) == 1  # a negative ACK is not resent by the writer
    writer.write(reports["final"])  # the next attempt gets AA: same connection still usable
    writer.close()


def test_v2_no_listener_is_transient(reports: dict[str, ReportResources]) -> None:
    writer = _v2_writer(free_port())
    with pytest.raises(WriteBackError) as err:
        writer.write(reports["final"])
    assert err.value.transient
    assert "no ACK" in str(err.value)


def test_v2_ack_for_another_message_is_transient(
    peer: PeerServer, reports: dict[str, ReportResources], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support import v2_peer

    monkeypatch.setattr(v2_peer, "_msh10", lambda message: "SOMEONE-ELSE")
    writer = _v2_writer(peer.server_address[1])
    with pytest.raises(WriteBackError, match="is for 'SOMEONE-ELSE'") as err:
        writer.write(reports["final"])
    assert err.value.transient


# ------------------------------------------------------------------ settings and wiring


def test_make_writer_by_mode(tmp_path: Path) -> None:
    base = {"data_dir": tmp_path, "out_dir": tmp_path / "out"}
    fhir = base | {"fhir_base_url": "http://ehr/fhir"}
    cases: list[tuple[dict[str, Any], type]] = [
        (base, NdjsonSink),
        (fhir, FhirServerWriter),
        (fhir | {"writeback_mode": "transaction"}, FhirTransactionWriter),
        (fhir | {"writeback_mode": "ndjson"}, NdjsonSink),
        (base | {"writeback_mode": "hl7v2", "v2_result_host": "ehr"}, MllpResultWriter),
    ]
    for kwargs, kind in cases:
        writer = make_writer(Settings(**kwargs))
        assert isinstance(writer, kind), kwargs
        writer.close()


def test_make_writer_writes_the_configured_model_card(
    tmp_path: Path, reports: dict[str, ReportResources]
) -> None:
    card = tmp_path / "card.md"
    card.write_bytes(b"# site model card")
    out = tmp_path / "out"
    writer = make_writer(Settings(data_dir=tmp_path, out_dir=out, model_card_path=card))
    writer.write(reports["final"])
    (line,) = (out / "DocumentReference.ndjson").read_text().splitlines()
    attachment = json.loads(line)["content"][0]["attachment"]
    assert base64.b64decode(attachment["data"]) == b"# site model card"
    missing = Settings(data_dir=tmp_path, out_dir=out, model_card_path=tmp_path / "nope.md")
    with pytest.raises(ValueError, match=r"ECGBRIDGE_MODEL_CARD_PATH=.*nope\.md"):
        make_writer(missing)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ECGBRIDGE_WRITEBACK_MODE": "mllp"}, "ECGBRIDGE_WRITEBACK_MODE='mllp' is not a"),
        ({"ECGBRIDGE_WRITEBACK_MODE": "transaction"}, "needs ECGBRIDGE_FHIR_BASE_URL"),
        ({"ECGBRIDGE_WRITEBACK_MODE": "put"}, "needs ECGBRIDGE_FHIR_BASE_URL"),
        ({"ECGBRIDGE_WRITEBACK_MODE": "hl7v2"}, "needs ECGBRIDGE_V2_RESULT_HOST"),
        (
            {
                "ECGBRIDGE_WRITEBACK_MODE": "HL7V2",
                "ECGBRIDGE_V2_RESULT_HOST": "ehr",
                "ECGBRIDGE_V2_RESULT_TLS_CERT": "c.pem",
            },
            "ECGBRIDGE_V2_RESULT_TLS_KEY",
        ),
    ],
)
def test_bad_writeback_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_doctor_checks_the_result_listener(tmp_path: Path, peer: PeerServer) -> None:
    ok = Settings(
        data_dir=tmp_path,
        writeback_mode="hl7v2",
        v2_result_host="127.0.0.1",
        v2_result_port=peer.server_address[1],
    )
    assert check_v2_result(ok).status is Status.OK
    down = ok.model_copy(update={"v2_result_port": free_port()})
    check = check_v2_result(down)
    assert check.status is Status.FAIL
    assert "ECGBRIDGE_V2_RESULT_HOST" in check.message
    from integration.audit.config import AuditSettings

    audit = AuditSettings(data_dir=tmp_path, environment="development")
    names = {c.name for c in run_doctor(ok, audit=audit, verify_weights=lambda: "ab" * 32)}
    assert "hl7v2 results" in names and "out dir" not in names
    assert not _received(peer)  # the doctor sends no message
