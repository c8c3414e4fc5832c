"""The audit API and review pages through FastAPI's TestClient (in-memory log)."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from integration.audit import AuditLog, EventKind, MemoryStore, SearchQuery
from integration.audit.router import bearer_reviewers, make_audit_router
from tests.audit.conftest import EventFactory

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'


def seed(log: AuditLog, make_event: EventFactory, ecg: str, patient: str, start: int) -> None:
    for j, kind in enumerate(
        [
            EventKind.MESSAGE_RECEIVED,
            EventKind.ACK_SENT,
            EventKind.ANALYSIS_STARTED,
            EventKind.ANALYSIS_FINISHED,
            EventKind.REPORT_WRITTEN,
            EventKind.ALERT_SENT,
            EventKind.ALERT_ACKNOWLEDGED,
        ]
    ):
        extra: dict[str, object] = {}
        if kind is EventKind.ANALYSIS_FINISHED:
            extra = {
                "model_version": "triage-1.0",
                "finding": "triage-positive",
                "detail": {
                    "probability": 0.93,
                    "territory_LAD": 0.81,
                    "explanation": "ST elevation V2-V4",
                    "fairness": "stable",
                },
            }
        if kind is EventKind.REPORT_WRITTEN:
            extra = {"resource": "DiagnosticReport/r1/_history/1"}
        log.append(make_event(start + j, kind=kind, patient=patient, ecg_id=ecg, **extra))


@pytest.fixture
def client_and_log(make_event: EventFactory) -> tuple[TestClient, AuditLog]:
    log = AuditLog.in_memory(head_interval=4, head_max_age_s=3600)
    seed(log, make_event, "ecgA", "MRN-A", 0)
    seed(log, make_event, "ecgB", "MRN-B", 10)
    app = FastAPI()
    app.include_router(
        make_audit_router(
            log,
            reviewer=bearer_reviewers({"s3cret": "alice"}),
            ecg_image=lambda ecg_id: (SVG, "image/svg+xml"),
        )
    )
    return TestClient(app), log


def test_auditevent_search_needs_a_reviewer(client_and_log: tuple[TestClient, AuditLog]) -> None:
    client, _ = client_and_log
    assert client.get("/audit/AuditEvent").status_code == 401
    r = client.get("/audit/AuditEvent", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_auditevent_search_returns_valid_bundle(
    client_and_log: tuple[TestClient, AuditLog],
) -> None:
    client, log = client_and_log
    auth = {"Authorization": "Bearer s3cret"}
    r = client.get(
        "/audit/AuditEvent",
        params={"patient": "MRN-B", "subtype": "analysis.finished"},
        headers=auth,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate(r.json())
    assert bundle.total == 1
    r = client.get(
        "/audit/AuditEvent",
        params=[("date", "ge2026-03-01T08:03:00"), ("date", "le2026-03-01T08:05:00")],
        headers=auth,
    )
    assert r.json()["total"] == 3
    assert (
        client.get("/audit/AuditEvent", params={"date": "ge-nonsense"}, headers=auth).status_code
        == 400
    )
    viewed = log.search(SearchQuery(kinds=(EventKind.AUDIT_EXPORTED.value,)))
    assert viewed and viewed[0].actor == "reviewer:alice"


def test_review_pages(client_and_log: tuple[TestClient, AuditLog]) -> None:
    client, log = client_and_log
    r = client.post("/audit/review/login", data={"token": "s3cret"}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get("/audit/review", params={"patient": "MRN-A"})
    assert page.status_code == 200 and "ecgA" in page.text and "ecgB" not in page.text
    report = client.get("/audit/review/ecg/ecgA")
    assert 'data-status="ok"' in report.text and "ST elevation V2-V4" in report.text
    assert report.text.count('data-testid="event-row"') == 7
    assert client.get("/audit/review/ecg/ecgA/image").content == SVG
    store = log.store
    assert isinstance(store, MemoryStore)
    e = store.entries[3].entry
    store.entries[3] = dataclasses.replace(store.entries[3], entry=e.replace(b"0.93", b"0.13"))
    report = client.get("/audit/review/ecg/ecgA")
    assert 'data-status="failed"' in report.text and "entry 3" in report.text
    assert client.get("/audit/review/ecg/nope").status_code == 404
