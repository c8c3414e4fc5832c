"""CDS Hooks 2.0 service through FastAPI's TestClient (in-memory audit log)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B.servicerequest import ServiceRequest

from inference.result import AnalysisResult, QualityReport, TerritoryFinding, TriageResult
from integration.audit import AuditLog, EventKind, PatientRef, SearchQuery, StoredEvent
from integration.cds import (
    ORDER_SELECT_ID,
    PATIENT_VIEW_ID,
    PatientKey,
    StoredAnalysis,
    make_cds_router,
)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
MRN_SYSTEM = "urn:oid:1.2.3.4.mrn"


def _result(p: float, *, lad: float = 0.1) -> AnalysisResult:
    return AnalysisResult(
        record_id="r1",
        model_version="m-test-1",
        quality=QualityReport(ok=True),
        triage=TriageResult(probability=p, threshold=0.4),
        territories=(
            TerritoryFinding("anterior", "LAD", lad, 0.5),
            TerritoryFinding("inferior", "RCA", 0.05, 0.5),
            TerritoryFinding("lateral", "LCx", 0.02, 0.5),
        ),
        analysed_at=T0,
    )


POSITIVE = StoredAnalysis.from_result(
    _result(0.87, lad=0.81),
    ecg_id="ecg-pos",
    report_ref="DiagnosticReport/ecg-abc/_history/2",
    explanation="ST elevation in V2-V4 drove the call",
    report_image_url="https://ecg.example/report/ecg-abc.svg",
    patient=PatientRef(identifier="MRN-1", system=MRN_SYSTEM),
)
NEGATIVE = StoredAnalysis.from_result(
    _result(0.12), ecg_id="ecg-neg", report_ref="DiagnosticReport/ecg-def"
)


class Lookup:
    """The inbox's side of the contract: latest analysis by reference or identifier."""

    def __init__(self) -> None:
        self.by_ref: dict[str, StoredAnalysis] = {"Patient/p-neg": NEGATIVE}
        self.by_mrn: dict[str, StoredAnalysis] = {"MRN-1": POSITIVE}
        self.asked: list[PatientKey] = []

    def __call__(self, key: PatientKey) -> StoredAnalysis | None:
        self.asked.append(key)
        if key.reference in self.by_ref:
            return self.by_ref[key.reference]
        for system, value in key.identifiers:
            if system == MRN_SYSTEM and value in self.by_mrn:
                return self.by_mrn[value]
        return None


@pytest.fixture
def audit() -> AuditLog:
    return AuditLog.in_memory(head_interval=1000, head_max_age_s=3600)


@pytest.fixture
def lookup() -> Lookup:
    return Lookup()


@pytest.fixture
def client(audit: AuditLog, lookup: Lookup) -> TestClient:
    app = FastAPI()
    app.include_router(
        make_cds_router(latest=lookup, audit=audit, report_base_url="https://ehr.example/fhir")
    )
    return TestClient(app)


def _patient(pid: str, mrn: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if mrn:
        res["identifier"] = [{"system": MRN_SYSTEM, "value": mrn}]
    return res


def patient_view(pid: str, mrn: str | None = None) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/dr-1", "patientId": pid},
        "prefetch": {"patient": _patient(pid, mrn)},
    }


def _events(audit: AuditLog, kind: EventKind) -> list[StoredEvent]:
    return audit.search(SearchQuery(kinds=(kind.value,)))


def test_discovery_lists_both_services_with_prefetch(client: TestClient) -> None:
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    services = {s["id"]: s for s in resp.json()["services"]}
    assert services[PATIENT_VIEW_ID]["hook"] == "patient-view"
    assert services[ORDER_SELECT_ID]["hook"] == "order-select"
    for s in services.values():
        assert s["prefetch"] == {"patient": "Patient/{{context.patientId}}"}
        assert s["title"] and s["description"]


def test_patient_view_positive_card_is_critical_with_territory_link_and_suggestion(
    client: TestClient, audit: AuditLog, lookup: Lookup
) -> None:
    resp = client.post(f"/cds-services/{PATIENT_VIEW_ID}", json=patient_view("p-1", "MRN-1"))
    assert resp.status_code == 200, resp.text
    (card,) = resp.json()["cards"]
    assert lookup.asked[-1] == PatientKey("Patient/p-1", ((MRN_SYSTEM, "MRN-1"),))
    assert card["indicator"] == "critical"
    assert len(card["summary"]) <= 140
    assert "87%" in card["summary"]
    assert "LAD" in card["summary"]
    assert "anterior (LAD) 81%" in card["detail"]
    assert "ST elevation in V2-V4 drove the call" in card["detail"]
    assert "not a diagnosis" in card["detail"]
    urls = {link["label"]: link["url"] for link in card["links"]}
    assert urls["ECG report"] == "https://ehr.example/fhir/DiagnosticReport/ecg-abc/_history/2"
    assert urls["ECG report picture"] == "https://ecg.example/report/ecg-abc.svg"
    assert card["selectionBehavior"] == "at-most-one"
    (sugg,) = card["suggestions"]
    (action,) = sugg["actions"]
    assert action["type"] == "create"
    request = ServiceRequest.model_validate(action["resource"])
    assert request.priority == "stat"
    assert request.subject.reference == "Patient/p-1"
    assert {r["code"] for r in card["overrideReasons"]} >= {"disagree", "already-managed"}
    (shown,) = _events(audit, EventKind.CDS_CARD_SHOWN)
    assert shown.ecg_id == "ecg-pos"
    assert shown.finding == "triage-positive"
    assert shown.detail["card"] == card["uuid"]
    assert shown.actor == f"cds:{PATIENT_VIEW_ID}:Practitioner/dr-1"
    # the same analysis gives the same card uuid (feedback can find it)
    again = client.post(f"/cds-services/{PATIENT_VIEW_ID}", json=patient_view("p-1", "MRN-1"))
    assert again.json()["cards"][0]["uuid"] == card["uuid"]


def test_patient_view_negative_is_info_without_suggestions(client: TestClient) -> None:
    (card,) = client.post(f"/cds-services/{PATIENT_VIEW_ID}", json=patient_view("p-neg")).json()[
        "cards"
    ]
    assert card["indicator"] == "info"
    assert "no acute MI" in card["summary"]
    assert "does not rule out MI" in card["detail"]
    assert "not available yet" in card["detail"]
    assert "suggestions" not in card
    assert "selectionBehavior" not in card


def test_patient_without_analysis_gets_no_cards(client: TestClient, audit: AuditLog) -> None:
    resp = client.post(f"/cds-services/{PATIENT_VIEW_ID}", json=patient_view("nobody"))
    assert resp.status_code == 200
    assert resp.json() == {"cards": []}
    assert _events(audit, EventKind.CDS_CARD_SHOWN) == []


def test_not_analysed_ecg_is_a_warning_that_names_the_problem(
    client: TestClient, lookup: Lookup
) -> None:
    lookup.by_ref["Patient/p-q"] = StoredAnalysis.from_result(
        AnalysisResult(
            record_id="q",
            model_version="m-test-1",
            quality=QualityReport(ok=False, problems=("V2 lead off",)),
            triage=None,
        ),
        ecg_id="ecg-q",
        report_ref=None,
    )
    (card,) = client.post(f"/cds-services/{PATIENT_VIEW_ID}", json=patient_view("p-q")).json()[
        "cards"
    ]
    assert card["indicator"] == "warning"
    assert "V2 lead off" in card["detail"]
    assert "links" not in card


@pytest.mark.parametrize(
    ("mutate", "status", "words"),
    [
        (lambda b: b.pop("context"), 400, "context"),
        (lambda b: b.pop("hookInstance"), 400, "hookInstance"),
        (lambda b: b["context"].pop("patientId"), 400, "patientId"),
        (lambda b: b.update(hook="order-sign"), 400, "patient-view"),
        (lambda b: b.pop("prefetch"), 412, "prefetch"),
        (lambda b: b.update(prefetch={"patient": None}), 412, "prefetch"),
        (lambda b: b["prefetch"]["patient"].update(id="other"), 400, "does not match"),
    ],
)
def test_bad_requests_get_cds_hooks_errors(
    client: TestClient, audit: AuditLog, mutate: Any, status: int, words: str
) -> None:
    body = patient_view("p-1", "MRN-1")
    mutate(body)
    resp = client.post(f"/cds-services/{PATIENT_VIEW_ID}", json=body)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["description"]
    assert _events(audit, EventKind.CDS_CARD_SHOWN) == []


def test_not_json_and_unknown_service(client: TestClient) -> None:
    resp = client.post(f"/cds-services/{PATIENT_VIEW_ID}", content=b"{nope")
    assert resp.status_code == 400
    assert client.post("/cds-services/nope", json=patient_view("p-1")).status_code == 404
    assert client.post("/cds-services/nope/feedback", json={}).status_code == 404


def _order(oid: str, code: str, priority: str = "routine") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": oid,
        "status": "draft",
        "intent": "order",
        "priority": priority,
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": "Patient/p-1"},
    }


def order_select(selected: list[str], orders: list[dict[str, Any]]) -> dict[str, Any]:
    body = patient_view("p-1", "MRN-1")
    body["hook"] = "order-select"
    body["context"] |= {
        "selections": selected,
        "draftOrders": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": o} for o in orders],
        },
    }
    return body


def test_order_select_suggests_stat_for_a_selected_angiography(client: TestClient) -> None:
    angio, lipids = _order("o1", "33367005"), _order("o2", "252150008")
    resp = client.post(
        f"/cds-services/{ORDER_SELECT_ID}",
        json=order_select(["ServiceRequest/o1"], [angio, lipids]),
    )
    assert resp.status_code == 200, resp.text
    (card,) = resp.json()["cards"]
    assert card["indicator"] == "critical"
    (sugg,) = card["suggestions"]
    (action,) = sugg["actions"]
    assert action["type"] == "update"
    updated = ServiceRequest.model_validate(action["resource"])
    assert (updated.id, updated.priority) == ("o1", "stat")


def test_order_select_ignores_non_cardiology_and_unselected_orders(client: TestClient) -> None:
    angio, lipids = _order("o1", "33367005"), _order("o2", "252150008")
    for selected in (["ServiceRequest/o2"], []):
        resp = client.post(
            f"/cds-services/{ORDER_SELECT_ID}", json=order_select(selected, [angio, lipids])
        )
        assert resp.json() == {"cards": []}
    stat = _order("o3", "183519002", priority="stat")
    (card,) = client.post(
        f"/cds-services/{ORDER_SELECT_ID}", json=order_select(["ServiceRequest/o3"], [stat])
    ).json()["cards"]
    assert "suggestions" not in card  # already STAT
    bad = order_select(["ServiceRequest/o1"], [angio])
    del bad["context"]["draftOrders"]
    assert client.post(f"/cds-services/{ORDER_SELECT_ID}", json=bad).status_code == 400


def test_feedback_records_override_and_reason_for_the_fairness_monitor(
    client: TestClient, audit: AuditLog
) -> None:
    (card,) = client.post(
        f"/cds-services/{PATIENT_VIEW_ID}", json=patient_view("p-1", "MRN-1")
    ).json()["cards"]
    body = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": card["overrideReasons"][0],
                    "userComment": "old LBBB, unchanged from 2024",
                },
                "outcomeTimestamp": "2026-11-21T12:05:00Z",
            },
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-11-21T12:06:00Z",
            },
        ]
    }
    resp = client.post(f"/cds-services/{PATIENT_VIEW_ID}/feedback", json=body)
    assert resp.status_code == 200, resp.text
    (override,) = audit.search(SearchQuery(kinds=(EventKind.CDS_FEEDBACK.value,), override=True))
    assert override.ecg_id == "ecg-pos"
    assert override.finding == "triage-positive"
    assert override.model_version == "m-test-1"
    assert override.detail["override_reason"] == "disagree"
    assert override.detail["override_comment"] == "old LBBB, unchanged from 2024"
    assert override.patient_key is not None  # searchable by patient, encrypted at rest
    (accepted,) = audit.search(SearchQuery(kinds=(EventKind.CDS_FEEDBACK.value,), override=False))
    assert accepted.detail["accepted_suggestions"] == card["suggestions"][0]["uuid"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"feedback": []},
        {"feedback": [{"card": "x", "outcome": "ignored", "outcomeTimestamp": "2026-01-01"}]},
        {"feedback": [{"card": "x", "outcome": "accepted"}]},
    ],
)
def test_malformed_feedback_is_400_and_not_audited(
    client: TestClient, audit: AuditLog, body: Mapping[str, Any]
) -> None:
    resp = client.post(f"/cds-services/{PATIENT_VIEW_ID}/feedback", json=body)
    assert resp.status_code == 400
    assert _events(audit, EventKind.CDS_FEEDBACK) == []


def test_feedback_for_an_unknown_card_is_still_audited(client: TestClient, audit: AuditLog) -> None:
    body = {
        "feedback": [
            {"card": "unknown", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T12:00Z"}
        ]
    }
    assert client.post(f"/cds-services/{PATIENT_VIEW_ID}/feedback", json=body).status_code == 200
    (ev,) = _events(audit, EventKind.CDS_FEEDBACK)
    assert ev.detail["card_known"] is False
    assert ev.override is True


def test_stored_analysis_from_the_inbox_result_json() -> None:
    result = _result(0.87, lad=0.81)
    text = json.dumps(
        result.to_json() | {"timings_ms": {"model_ms": 3.0}, "explanation": {"summary": "ST up"}}
    )
    a = StoredAnalysis.from_result_json(
        text, ecg_id="e1", report_ref="DiagnosticReport/x", analysed_at=T0
    )
    assert a.triage_positive
    assert a.finding == "triage-positive"
    assert a.explanation == "ST up"
    lad = next(t for t in a.territories if t.vessel == "LAD")
    assert (lad.territory, lad.positive) == ("anterior", True)
    assert a == StoredAnalysis.from_result(
        result, ecg_id="e1", report_ref="DiagnosticReport/x", explanation="ST up"
    )
    # the explainer's own JSON (no summary key) becomes a sentence on the card
    explained = result.to_json() | {
        "explanation": {
            "attributions": [{"lead": "V2", "segment": "ST", "share": 0.31}],
            "counterfactual": {
                "edits": [{"lead": "V2", "segment": "ST", "delta_mv": -0.2}],
                "valid": True,
                "original_probability": 0.87,
                "new_probability": 0.1,
            },
        }
    }
    c = StoredAnalysis.from_result_json(
        json.dumps(explained), ecg_id="e3", report_ref=None, analysed_at=None
    )
    assert c.explanation == (
        "Main drivers: V2 ST (31%). What would flip it: V2 ST -0.20 mV (MI probability 87% -> 10%)."
    )
    refused = AnalysisResult("q", "m", QualityReport(ok=False, problems=("noise",)), None)
    b = StoredAnalysis.from_result_json(
        json.dumps(refused.to_json()), ecg_id="e2", report_ref=None, analysed_at=None
    )
    assert (b.analysed, b.finding, b.quality_problems) == (False, "not-analysed", ("noise",))
