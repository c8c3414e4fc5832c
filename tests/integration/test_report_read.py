"""GET /fhir/DiagnosticReport (read and search by patient) through FastAPI's test client: the
reports written by the real ndjson sink, or held by a FHIR server twin (httpx MockTransport);
the inbox (SQLite) as the index."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient

from inference.record import PatientRef
from inference.result import AnalysisResult, QualityReport, TriageResult
from integration.api import create_app
from integration.audit import AuditEvent, EventKind
from integration.inbox import Inbox
from integration.ingest import IngestService
from integration.report_store import (
    FhirReportSource,
    NdjsonReportSource,
    ReportIndex,
    ReportStore,
    make_report_router,
    store_from_settings,
)
from integration.samples import Sample, load_samples
from integration.settings import Settings
from integration.subscriptions import FhirReader, SubscriptionReceiver
from integration.writeback import NdjsonSink
from mappers.fhir_r4 import build_report
from tests.support.reports import NOW, PNG, key, write

EHR = "https://ehr.example.org/fhir"


class Audit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def append(self, event: AuditEvent) -> int:
        self.events.append(event)
        return len(self.events)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return load_samples()


@dataclass
class Setup:
    client: TestClient
    inbox: Inbox
    sink: NdjsonSink
    audit: Audit


def _app(inbox: Inbox, store: ReportStore | None, audit: Audit, **kw: Any) -> TestClient:
    ingest = IngestService(inbox=inbox, enqueue=lambda _i, _p: None)
    receiver = SubscriptionReceiver(ingest=ingest, topics=frozenset(), reader=None)
    app = create_app(
        ingest=ingest,
        inbox=inbox,
        health=dict,
        audit=audit,  # type: ignore[arg-type]
        subscriptions=receiver,
        reports=store,
        **kw,
    )
    return TestClient(app)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    sink = NdjsonSink(tmp_path / "out")
    audit = Audit()
    store = ReportStore(
        index=ReportIndex.for_inbox(inbox),
        source=NdjsonReportSource(tmp_path / "out"),
        patient_key=key,
    )
    return Setup(_app(inbox, store, audit), inbox, sink, audit)


def test_read_returns_the_report_as_written_with_its_picture(
    setup: Setup, samples: list[Sample]
) -> None:
    w = write(setup.inbox, setup.sink, samples[0].record, 1)
    resp = setup.client.get(f"/fhir/DiagnosticReport/{w.report_id}")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/fhir+json")
    assert resp.json() == w.report  # the sink's attachment file put back inline
    assert base64.b64decode(resp.json()["presentedForm"][0]["data"]) == PNG
    (event,) = setup.audit.events
    assert event.kind is EventKind.REPORT_READ
    assert event.ecg_id == w.ecg_id and event.resource == f"DiagnosticReport/{w.report_id}"
    assert event.patient is not None


def test_the_final_version_replaces_the_preliminary_one(
    setup: Setup, samples: list[Sample]
) -> None:
    w = write(setup.inbox, setup.sink, samples[0].record, 1)
    result = AnalysisResult(
        samples[0].record.record_id, "test-model", QualityReport(True), TriageResult(0.8, 0.5)
    )
    setup.sink.write(
        build_report(result, samples[0].record, report_id=w.report_id, issued=NOW, preliminary=True)
    )
    got = setup.client.get(f"/fhir/DiagnosticReport/{w.report_id}").json()
    assert got["status"] == "preliminary"


@pytest.mark.parametrize("report_id", ["ecg-unknown", "bad_id!", "x" * 65])
def test_unknown_or_invalid_ids_are_404(setup: Setup, report_id: str) -> None:
    resp = setup.client.get(f"/fhir/DiagnosticReport/{report_id}")
    assert resp.status_code == 404
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert resp.json()["issue"][0]["code"] == "not-found"


def test_a_report_in_the_index_but_not_at_its_destination_is_404(
    setup: Setup, samples: list[Sample]
) -> None:
    w = write(setup.inbox, None, samples[0].record, 1)
    assert setup.client.get(f"/fhir/DiagnosticReport/{w.report_id}").status_code == 404


def test_search_by_subject_and_patient_is_a_searchset_newest_first(
    setup: Setup, samples: list[Sample]
) -> None:
    a = samples[0].record
    older = write(setup.inbox, setup.sink, a, 1)
    newer = write(setup.inbox, setup.sink, a, 2)
    write(setup.inbox, setup.sink, samples[1].record, 3)  # another patient
    assert a.patient is not None and a.patient.value is not None
    # the sample records carry an MRN: search by identifier finds them
    bundle = setup.client.get(
        "/fhir/DiagnosticReport",
        params={"subject:identifier": f"{a.patient.system}|{a.patient.value}"},
    ).json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 2
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert ids == [newer.report_id, older.report_id]
    assert all(e["search"]["mode"] == "match" for e in bundle["entry"])
    assert bundle["entry"][0]["fullUrl"].endswith(f"/fhir/DiagnosticReport/{newer.report_id}")
    one = setup.client.get(
        "/fhir/DiagnosticReport",
        params={"patient:identifier": a.patient.value, "_count": "1"},
    ).json()
    assert [e["resource"]["id"] for e in one["entry"]] == [newer.report_id]
    assert len(setup.audit.events) == 3  # one report.read per report returned


def test_search_by_reference_uses_the_reference_key(setup: Setup, samples: list[Sample]) -> None:
    record = replace(samples[0].record, patient=PatientRef(reference="Patient/p-42"))
    w = write(setup.inbox, setup.sink, record, 1)
    for params in ({"subject": "Patient/p-42"}, {"patient": "p-42"}, {"patient": "Patient/p-42"}):
        bundle = setup.client.get("/fhir/DiagnosticReport", params=params).json()
        assert [e["resource"]["id"] for e in bundle["entry"]] == [w.report_id], params
    none = setup.client.get("/fhir/DiagnosticReport", params={"subject": "Patient/other"})
    assert none.status_code == 200 and none.json()["total"] == 0


def test_search_needs_a_patient(setup: Setup) -> None:
    resp = setup.client.get("/fhir/DiagnosticReport")
    assert resp.status_code == 400
    assert resp.json()["issue"][0]["code"] == "required"
    bad = setup.client.get("/fhir/DiagnosticReport", params={"subject": "Patient/a b"})
    assert bad.status_code == 400
    count = setup.client.get("/fhir/DiagnosticReport", params={"patient": "x", "_count": "z"})
    assert count.status_code == 400


class Ehr:
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503)
        found = self.resources.get(str(request.url).removeprefix(EHR + "/"))
        return httpx.Response(404) if found is None else httpx.Response(200, json=found)


@pytest.fixture
def ehr_setup(tmp_path: Path) -> tuple[TestClient, Inbox, Ehr]:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    ehr = Ehr()
    reader = FhirReader(EHR, timeout_s=5, transport=httpx.MockTransport(ehr.handler))
    store = ReportStore(
        index=ReportIndex.for_inbox(inbox),
        source=FhirReportSource(reader),
        patient_key=key,
        patients=reader,
    )
    return _app(inbox, store, Audit()), inbox, ehr


def test_reports_written_to_the_ehr_are_read_from_it(
    ehr_setup: tuple[TestClient, Inbox, Ehr], samples: list[Sample]
) -> None:
    client, inbox, ehr = ehr_setup
    record = samples[0].record
    w = write(inbox, None, record, 1)
    ehr.resources[f"DiagnosticReport/{w.report_id}"] = w.report
    assert client.get(f"/fhir/DiagnosticReport/{w.report_id}").json() == w.report
    # subject=Patient/<id>: the EHR says which identifiers (MRN) the Patient has
    assert record.patient is not None and record.patient.reference is not None
    pid = record.patient.reference
    ehr.resources[pid] = {
        "resourceType": "Patient",
        "id": pid.split("/")[1],
        "identifier": [{"system": record.patient.system, "value": record.patient.value}],
    }
    bundle = client.get("/fhir/DiagnosticReport", params={"subject": pid}).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [w.report_id]


def test_ehr_down_is_503_for_a_read_and_a_warning_for_the_patient_lookup(
    ehr_setup: tuple[TestClient, Inbox, Ehr], samples: list[Sample]
) -> None:
    client, inbox, ehr = ehr_setup
    w = write(inbox, None, samples[0].record, 1)
    ehr.down = True
    resp = client.get(f"/fhir/DiagnosticReport/{w.report_id}")
    assert resp.status_code == 503 and resp.json()["issue"][0]["code"] == "transient"
    resp = client.get("/fhir/DiagnosticReport", params={"subject": "Patient/nobody"})
    assert resp.status_code == 200
    (outcome,) = [e for e in resp.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["resource"]["issue"][0]["severity"] == "warning"


def test_reads_need_the_bearer_token_when_configured(tmp_path: Path) -> None:
    def deny(request: Request) -> None:
        raise HTTPException(401, "bearer token required")

    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    store = ReportStore(
        index=ReportIndex.for_inbox(inbox),
        source=NdjsonReportSource(tmp_path),
        patient_key=key,
    )
    client = _app(inbox, store, Audit(), cds_auth=deny)
    assert client.get("/fhir/DiagnosticReport/ecg-1").status_code == 401
    assert client.get("/fhir/DiagnosticReport", params={"patient": "x"}).status_code == 401


def test_without_a_readable_destination_reads_are_501(tmp_path: Path) -> None:
    """Reports sent as HL7 v2 only (another engineer's ``writeback_mode``): nothing to read."""
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    settings = Settings(data_dir=tmp_path).model_copy(update={"writeback_mode": "hl7v2"})
    assert store_from_settings(inbox, patient_key=key, settings=settings) is None
    app = FastAPI()
    app.include_router(make_report_router(None))
    client = TestClient(app)
    assert client.get("/fhir/DiagnosticReport/ecg-1").status_code == 501
    assert client.get("/fhir/DiagnosticReport", params={"patient": "x"}).status_code == 501


def test_ndjson_is_the_source_without_a_fhir_base(tmp_path: Path) -> None:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    store = store_from_settings(inbox, patient_key=key, settings=Settings(out_dir=tmp_path))
    assert store is not None and isinstance(store._source, NdjsonReportSource)


def test_audit_kind_is_exported() -> None:
    from integration.audit.export import _TYPES

    assert _TYPES[EventKind.REPORT_READ][2] == "R"
    assert json.dumps(EventKind.REPORT_READ.value) == '"report.read"'
