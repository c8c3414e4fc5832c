"""ED alerts: the Communication, the signed webhook against a real local HTTP receiver (a
`http.server` thread), retries, the acknowledgement URL, and (e2e) the Communication on the
real test FHIR server with the project's profiles loaded (``ecgbridge-ed-alert`` enforced)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B.communication import Communication

from inference.record import LEADS_12, EcgRecord, PatientRef
from inference.result import AnalysisResult, QualityReport, TerritoryFinding, TriageResult
from integration.alerts import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AlertSender,
    AlertSettings,
    alert_identity,
    build_communication,
    make_alert_ack_router,
    verify_signature,
)
from integration.audit import AuditLog, EventKind, Outcome, SearchQuery
from mappers.profiles import ED_ALERT_PROFILE, PROFILES_DIR
from tests.support.processes import free_port

SECRET = "pager-shared-secret"
REPORT = "DiagnosticReport/ecg-0123/_history/1"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _record() -> EcgRecord:
    return EcgRecord(
        signals_mv=np.zeros((12, 5000), dtype=np.float32),
        lead_names=LEADS_12,
        fs_hz=500.0,
        record_id="rec-1",
        patient=PatientRef(reference="Patient/p-1", system="urn:mrn", value="MRN-1"),
        identifiers=(("msh10", "MSG0001"),),
    )


def _result(p: float) -> AnalysisResult:
    return AnalysisResult(
        record_id="rec-1",
        model_version="m-test-1",
        quality=QualityReport(ok=True),
        triage=TriageResult(probability=p, threshold=0.4),
        territories=(
            TerritoryFinding("anterior", "LAD", 0.8, 0.5),
            TerritoryFinding("inferior", "RCA", 0.1, 0.5),
        ),
    )


class Receiver:
    """A paging-system stand-in: answers the queued statuses in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append((dict(self.headers.items()), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/page"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([])
    yield r
    r.close()


def _settings(url: str, **kw: object) -> AlertSettings:
    return AlertSettings.model_validate(
        {
            "recipient": "PractitionerRole/ed-triage",
            "webhook_url": url,
            "webhook_secret": SECRET,
            "ack_base_url": "https://ecgbridge.example",
            "backoff_initial_s": 0.01,
        }
        | kw
    )


def test_communication_is_valid_r4_stat_to_the_recipient() -> None:
    comm = build_communication(
        _result(0.9),
        _record(),
        alert_id="alert-1",
        report_ref=REPORT,
        recipient="PractitionerRole/ed-triage",
        sent=NOW,
        ack_url="https://x/alerts/alert-1/ack?t=1",
    )
    body = comm.model_dump(mode="json", exclude_none=True)
    Communication.model_validate(body)
    assert body["priority"] == "stat"
    assert body["status"] == "completed"
    assert body["recipient"] == [{"reference": "PractitionerRole/ed-triage"}]
    assert body["subject"] == {"reference": "Patient/p-1"}
    assert body["about"] == [{"reference": "DiagnosticReport/ecg-0123"}]
    assert body["meta"]["security"][0]["code"] == "AIAST"
    assert body["meta"]["profile"] == [ED_ALERT_PROFILE]
    text = body["payload"][0]["contentString"]
    assert "90%" in text
    assert "LAD" in text
    assert "not a diagnosis" in text


def test_signed_webhook_is_retried_until_delivered(receiver: Receiver) -> None:
    receiver.statuses[:] = [503, 429]
    audit = AuditLog.in_memory()
    slept: list[float] = []
    sender = AlertSender(_settings(receiver.url), audit=audit, sleep=slept.append)
    outcome = sender.send_alert(_result(0.9), _record(), REPORT, ecg_id="inbox-1")
    assert outcome.raised
    assert outcome.delivered, outcome.error
    assert (outcome.webhook_attempts, outcome.webhook_status) == (3, 200)
    assert slept == [0.01, 0.02]
    assert outcome.alert_id == alert_identity(REPORT) == alert_identity("DiagnosticReport/ecg-0123")
    assert outcome.elapsed_ms < 1000
    assert len(receiver.requests) == 3
    headers, body = receiver.requests[-1]
    assert headers["Idempotency-Key"] == outcome.alert_id
    now = float(headers[TIMESTAMP_HEADER])
    sig = headers[SIGNATURE_HEADER]
    assert verify_signature(
        SECRET.encode(), body, timestamp=headers[TIMESTAMP_HEADER], signature=sig, now=now
    )
    assert not verify_signature(
        SECRET.encode(), body + b" ", timestamp=headers[TIMESTAMP_HEADER], signature=sig, now=now
    )
    assert not verify_signature(
        b"wrong", body, timestamp=headers[TIMESTAMP_HEADER], signature=sig, now=now
    )
    assert not verify_signature(
        SECRET.encode(), body, timestamp=headers[TIMESTAMP_HEADER], signature=sig, now=now + 301
    )
    payload = json.loads(body)
    assert payload["priority"] == "stat"
    assert payload["ecgId"] == "inbox-1"
    assert payload["territories"] == ["LAD"]
    Communication.model_validate(payload["communication"])
    (sent,) = audit.search(SearchQuery(kinds=(EventKind.ALERT_SENT.value,)))
    assert sent.outcome is Outcome.SUCCESS
    assert sent.ecg_id == "inbox-1"
    assert sent.message_id == "MSG0001"
    assert sent.detail["webhook_attempts"] == 3
    assert sent.patient_key is not None


def test_a_4xx_is_permanent_and_audited_as_failed(receiver: Receiver) -> None:
    receiver.statuses[:] = [400]
    audit = AuditLog.in_memory()
    sender = AlertSender(_settings(receiver.url), audit=audit, sleep=lambda s: None)
    outcome = sender.send_alert(_result(0.9), _record(), REPORT)
    assert (outcome.delivered, outcome.webhook_attempts, outcome.webhook_status) == (False, 1, 400)
    (sent,) = audit.search(SearchQuery(kinds=(EventKind.ALERT_SENT.value,)))
    assert sent.outcome is Outcome.SERIOUS_FAILURE
    assert sent.detail["error"] == "webhook: HTTP 400"


def test_an_unreachable_pager_is_retried_max_attempts_times() -> None:
    url = f"http://127.0.0.1:{free_port()}/page"  # nothing listens there
    slept: list[float] = []
    sender = AlertSender(_settings(url, max_attempts=4, backoff_max_s=0.03), sleep=slept.append)
    outcome = sender.send_alert(_result(0.9), _record(), REPORT)
    assert (outcome.delivered, outcome.webhook_attempts) == (False, 4)
    assert outcome.error == "webhook: ConnectError"
    assert slept == [0.01, 0.02, 0.03]


def test_low_risk_results_send_nothing(receiver: Receiver) -> None:
    sender = AlertSender(_settings(receiver.url))
    assert not sender.send_alert(_result(0.2), _record(), REPORT).raised
    refused = AnalysisResult("rec-1", "m", QualityReport(ok=False, problems=("noise",)), None)
    assert not sender.send_alert(refused, _record(), REPORT).raised
    assert receiver.requests == []


def test_webhook_without_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="SECRET"):
        AlertSender(AlertSettings(webhook_url="http://127.0.0.1:1/x"))


def test_acknowledgement_link_audits_and_forgeries_are_refused(receiver: Receiver) -> None:
    audit = AuditLog.in_memory()
    sender = AlertSender(_settings(receiver.url), audit=audit)
    sender.send_alert(_result(0.9), _record(), REPORT, ecg_id="inbox-1")
    ack_url = json.loads(receiver.requests[0][1])["ackUrl"]
    parts = urlsplit(ack_url)
    app = FastAPI()
    app.include_router(make_alert_ack_router(audit, secret=SECRET.encode()))
    client = TestClient(app)
    resp = client.get(f"{parts.path}?{parts.query}&by=dr-ed")
    assert resp.status_code == 200, resp.text
    assert resp.json()["acknowledged"] is True
    resp = client.post(f"{parts.path}?{parts.query}", json={"by": "nurse-2"})
    assert resp.status_code == 200
    acks = audit.search(SearchQuery(kinds=(EventKind.ALERT_ACKNOWLEDGED.value,)))
    assert {a.actor for a in acks} == {"pager:dr-ed", "pager:nurse-2"}
    assert {a.ecg_id for a in acks} == {"inbox-1"}
    forged = parts.query.replace("ecg=inbox-1", "ecg=inbox-2")
    assert client.get(f"{parts.path}?{forged}").status_code == 403
    assert client.post(parts.path).status_code == 403
    fails = audit.search(SearchQuery(kinds=(EventKind.AUTH_FAILURE.value,)))
    assert len(fails) == 2
    assert len(audit.search(SearchQuery(kinds=(EventKind.ALERT_ACKNOWLEDGED.value,)))) == 2


def test_mock_transport_twin_writes_the_communication_with_put() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"meta": {"versionId": "1"}})

    sender = AlertSender(
        AlertSettings(recipient="PractitionerRole/ed-triage"),
        fhir_base_url="https://ehr.example/fhir/",
        transport=httpx.MockTransport(handler),
    )
    outcome = sender.send_alert(_result(0.9), _record(), REPORT)
    assert outcome.delivered
    assert outcome.communication_ref == f"Communication/{outcome.alert_id}/_history/1"
    (req,) = seen
    assert req.method == "PUT"
    assert str(req.url) == f"https://ehr.example/fhir/Communication/{outcome.alert_id}"


@pytest.mark.e2e
def test_communication_on_the_real_fhir_server(receiver: Receiver) -> None:
    from tests.support.fhir_server import FhirServerProcess, ensure_node_modules

    ensure_node_modules()
    with FhirServerProcess(profiles_dir=PROFILES_DIR) as fhir:
        sender = AlertSender(_settings(receiver.url), fhir_base_url=fhir.base_url)
        outcome = sender.send_alert(_result(0.9), _record(), REPORT, ecg_id="inbox-1")
        assert outcome.delivered, outcome.error
        again = sender.send_alert(_result(0.9), _record(), REPORT, ecg_id="inbox-1")
        assert again.alert_id == outcome.alert_id  # retried task: same resource, new version
        got = httpx.get(f"{fhir.base_url}/Communication/{outcome.alert_id}").json()
        assert got["priority"] == "stat"
        assert got["meta"]["profile"] == [ED_ALERT_PROFILE]  # validated against it on PUT
        assert got["recipient"] == [{"reference": "PractitionerRole/ed-triage"}]
        assert got["meta"]["versionId"] != (outcome.communication_ref or "").rsplit("/", 1)[-1]
