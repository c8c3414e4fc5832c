"""Subscription rest-hook notifications (R4 backport) through FastAPI's test client; the EHR
is an httpx MockTransport holding FHIR resources."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient

from integration.api import create_app
from integration.audit import AuditEvent, EventKind, Outcome
from integration.inbox import Inbox
from integration.ingest import IngestService, decode_item
from integration.report_store import NdjsonReportSource, ReportIndex, ReportStore
from integration.samples import Sample, load_samples
from integration.subscriptions import (
    FhirReader,
    FocusError,
    SubscriptionReceiver,
    local_path,
    parse_notification,
)
from mappers.errors import FhirResourceError
from mappers.fhir_r4 import patient_resource, record_to_observation

FHIR = {"Content-Type": "application/fhir+json"}
EHR = "https://ehr.example.org/fhir"
TOPIC = "https://ehr.example.org/SubscriptionTopic/ecg-observation"
URL = "/fhir/subscription-notification"


class Audit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def append(self, event: AuditEvent) -> int:
        self.events.append(event)
        return len(self.events)


@dataclass
class Setup:
    client: TestClient
    queued: list[str]
    audit: Audit
    inbox: Inbox


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return load_samples()


class Ehr:
    """A FHIR server twin: resources by ``Type/id``; `down` makes it answer 503."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.down = False
        self.requests: list[str] = []

    def put(self, resource: dict[str, Any]) -> None:
        self.resources[f"{resource['resourceType']}/{resource['id']}"] = resource

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.down:
            return httpx.Response(503)
        path = str(request.url).removeprefix(EHR + "/")
        found = self.resources.get(path)
        if found is None:
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=found)


def _ecg(ehr: Ehr, sample: Sample, obs_id: str) -> str:
    obs = record_to_observation(sample.record) | {"id": obs_id}
    ehr.put(obs)
    patient = patient_resource(sample.record)
    assert patient is not None
    ehr.put(patient)
    return f"Observation/{obs_id}"


@pytest.fixture
def ehr() -> Ehr:
    return Ehr()


@pytest.fixture
def setup(tmp_path: Path, ehr: Ehr) -> Setup:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    queued: list[str] = []
    audit = Audit()
    ingest = IngestService(
        inbox=inbox, enqueue=lambda item_id, _p: queued.append(item_id), audit=audit
    )
    reader = FhirReader(EHR, timeout_s=5, transport=httpx.MockTransport(ehr.handler))
    receiver = SubscriptionReceiver(
        ingest=ingest, topics=frozenset({TOPIC}), reader=reader, audit=audit
    )
    store = ReportStore(
        index=ReportIndex.for_inbox(inbox),
        source=NdjsonReportSource(tmp_path / "out"),
        patient_key=None,
    )
    app = create_app(
        ingest=ingest,
        inbox=inbox,
        health=lambda: {"status": "ok"},
        subscriptions=receiver,
        reports=store,
    )
    return Setup(TestClient(app), queued, audit, inbox)


def notification(
    *focus: str,
    kind: str = "event-notification",
    topic: str = TOPIC,
    resources: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    events = [
        {
            "name": "notification-event",
            "part": [
                {"name": "event-number", "valueString": str(n + 1)},
                {"name": "focus", "valueReference": {"reference": ref}},
            ],
        }
        for n, ref in enumerate(focus)
    ]
    status = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": f"{EHR}/Subscription/s1"}},
            {"name": "topic", "valueCanonical": topic},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": kind},
            {"name": "events-since-subscription-start", "valueString": str(len(focus))},
            *events,
        ],
    }
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:7d3f1f5e-1f0a-4d0b-9a3e-3d3b2c1a0f00",
            "resource": status,
            "request": {"method": "GET", "url": f"{EHR}/Subscription/s1/$status"},
            "response": {"status": "200"},
        }
    ]
    for res in resources:
        entries.append(
            {
                "fullUrl": f"{EHR}/{res['resourceType']}/{res['id']}",
                "resource": res,
                "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"},
                "response": {"status": "201"},
            }
        )
    return {"resourceType": "Bundle", "type": "history", "entry": entries}


Post = Callable[[dict[str, Any]], httpx.Response]


def test_parse_reads_the_backport_status_parameters() -> None:
    note = parse_notification(notification("Observation/a", f"{EHR}/Observation/b"))
    assert note.topic == TOPIC
    assert note.subscription == f"{EHR}/Subscription/s1"
    assert note.type.value == "event-notification"
    assert note.events_since_start == "2"
    assert note.focus == ("Observation/a", f"{EHR}/Observation/b")


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda b: b | {"type": "collection"}, "Bundle.type"),
        (lambda b: b | {"entry": []}, "Bundle.entry"),
        (lambda b: b | {"entry": [{"resource": {"resourceType": "Patient"}}]}, "entry[0]"),
    ],
)
def test_parse_refuses_what_is_not_a_notification(
    mutate: Callable[[dict[str, Any]], dict[str, Any]], where: str
) -> None:
    with pytest.raises(FhirResourceError) as err:
        parse_notification(mutate(notification("Observation/a")))
    assert where in err.value.location


def test_local_path_keeps_to_the_ehr() -> None:
    assert local_path("Observation/1", base_url=EHR, kind="Observation") == "Observation/1"
    assert local_path(f"{EHR}/Observation/1", base_url=EHR, kind="Observation") == ("Observation/1")
    assert local_path("Observation/1/_history/2", base_url=EHR, kind="Observation") == (
        "Observation/1/_history/2"
    )
    for bad in ("https://evil.example/fhir/Observation/1", "Encounter/1", "Observation"):
        with pytest.raises(FocusError):
            local_path(bad, base_url=EHR, kind="Observation")


@pytest.mark.parametrize("kind", ["heartbeat", "handshake"])
def test_heartbeat_and_handshake_are_200_and_queue_nothing(
    setup: Setup, ehr: Ehr, kind: str
) -> None:
    client, queued = setup.client, setup.queued
    resp = client.post(URL, json=notification(kind=kind), headers=FHIR)
    assert resp.status_code == 200
    assert resp.json()["issue"][0]["severity"] == "information"
    assert queued == [] and ehr.requests == []


def test_event_fetches_the_observation_and_patient_and_queues_once(
    setup: Setup, ehr: Ehr, samples: list[Sample]
) -> None:
    client, queued, audit = setup.client, setup.queued, setup.audit
    focus = _ecg(ehr, samples[0], "ecg-1")
    resp = client.post(URL, json=notification(focus), headers=FHIR)
    assert resp.status_code == 202, resp.text
    (item,) = resp.json()["accepted"]
    assert item["focus"] == focus and item["replay"] is False
    assert queued == [item["id"]]
    patient_ref = samples[0].record.patient
    assert patient_ref is not None and patient_ref.reference is not None
    assert ehr.requests == [f"{EHR}/{focus}", f"{EHR}/{patient_ref.reference}"]
    received = [e for e in audit.events if e.kind is EventKind.MESSAGE_RECEIVED]
    assert received[-1].ecg_id == item["id"] and received[-1].actor == "subscription"
    status = client.get(item["location"]).json()
    assert status["channel"] == "subscription"
    # the same notification again: the same item, a replay, nothing queued
    again = client.post(URL, json=notification(focus), headers=FHIR)
    assert again.status_code == 202
    (replay,) = again.json()["accepted"]
    assert replay["id"] == item["id"] and replay["replay"] is True
    assert queued == [item["id"]]


def test_patient_demographics_come_from_the_fetched_patient(
    setup: Setup, ehr: Ehr, samples: list[Sample]
) -> None:
    sample = samples[0]
    focus = _ecg(ehr, sample, "ecg-demo")
    item = setup.client.post(URL, json=notification(focus), headers=FHIR).json()["accepted"][0]
    stored = setup.inbox.get(item["id"])
    assert stored is not None
    record = decode_item(stored)
    assert record.record_id == sample.record.record_id
    assert record.demographics.sex is sample.record.demographics.sex
    assert record.demographics.age_years is not None
    assert record.patient is not None and sample.record.patient is not None
    assert record.patient.value == sample.record.patient.value


def test_absolute_focus_within_the_ehr_is_fetched(
    setup: Setup, ehr: Ehr, samples: list[Sample]
) -> None:
    client, queued = setup.client, setup.queued
    focus = _ecg(ehr, samples[1], "ecg-abs")
    resp = client.post(URL, json=notification(f"{EHR}/{focus}"), headers=FHIR)
    assert resp.status_code == 202
    assert len(queued) == 1


def test_full_resource_payload_needs_no_fetch(
    setup: Setup, ehr: Ehr, samples: list[Sample]
) -> None:
    client, queued = setup.client, setup.queued
    obs = record_to_observation(samples[2].record) | {"id": "ecg-full"}
    patient = patient_resource(samples[2].record)
    assert patient is not None
    body = notification(f"{EHR}/Observation/ecg-full", resources=(obs, patient))
    resp = client.post(URL, json=body, headers=FHIR)
    assert resp.status_code == 202, resp.text
    assert ehr.requests == [] and len(queued) == 1


def test_unknown_topic_is_422_naming_it_audited_and_nothing_queued(
    setup: Setup, ehr: Ehr, samples: list[Sample]
) -> None:
    client, queued, audit = setup.client, setup.queued, setup.audit
    focus = _ecg(ehr, samples[0], "ecg-2")
    other = "https://ehr.example.org/SubscriptionTopic/admission"
    resp = client.post(URL, json=notification(focus, topic=other), headers=FHIR)
    assert resp.status_code == 422
    issue = resp.json()["issue"][0]
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert issue["code"] == "not-supported" and other in issue["diagnostics"]
    assert queued == [] and ehr.requests == []
    (event,) = audit.events
    assert event.kind is EventKind.MESSAGE_RECEIVED
    assert event.outcome is Outcome.MINOR_FAILURE
    assert other in str(event.detail["reason"])


def test_a_missing_focus_is_reported_and_the_others_still_taken(
    setup: Setup, ehr: Ehr, samples: list[Sample]
) -> None:
    client, queued, audit = setup.client, setup.queued, setup.audit
    good = _ecg(ehr, samples[0], "ecg-3")
    resp = client.post(URL, json=notification("Observation/gone", good), headers=FHIR)
    assert resp.status_code == 202
    body = resp.json()
    assert [a["focus"] for a in body["accepted"]] == [good]
    (issue,) = body["outcome"]["issue"]
    assert issue["code"] == "not-found" and issue["expression"] == ["Observation/gone"]
    assert len(queued) == 1
    refused = [e for e in audit.events if e.outcome is Outcome.MINOR_FAILURE]
    assert refused and refused[0].message_id == "Observation/gone"


def test_only_missing_foci_is_422(setup: Setup) -> None:
    client, queued = setup.client, setup.queued
    resp = client.post(URL, json=notification("Observation/gone"), headers=FHIR)
    assert resp.status_code == 422
    assert resp.json()["issue"][0]["code"] == "not-found"
    assert queued == []


def test_another_host_is_never_contacted(setup: Setup, ehr: Ehr) -> None:
    client, queued = setup.client, setup.queued
    resp = client.post(
        URL, json=notification("https://evil.example/fhir/Observation/1"), headers=FHIR
    )
    assert resp.status_code == 422
    assert "not on the configured EHR" in resp.json()["issue"][0]["diagnostics"]
    assert ehr.requests == [] and queued == []


def test_a_non_ecg_observation_is_reported(setup: Setup, ehr: Ehr) -> None:
    client, queued = setup.client, setup.queued
    ehr.put(
        {
            "resourceType": "Observation",
            "id": "bp",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        }
    )
    resp = client.post(URL, json=notification("Observation/bp"), headers=FHIR)
    assert resp.status_code == 422
    assert "Observation/bp" in resp.json()["issue"][0]["diagnostics"]
    assert queued == []


def test_ehr_down_is_503_so_the_ehr_retries(setup: Setup, ehr: Ehr, samples: list[Sample]) -> None:
    client, queued = setup.client, setup.queued
    focus = _ecg(ehr, samples[0], "ecg-4")
    ehr.down = True
    resp = client.post(URL, json=notification(focus), headers=FHIR)
    assert resp.status_code == 503
    assert resp.json()["issue"][0]["code"] == "transient"
    assert queued == []


def test_unreachable_ehr_is_503(tmp_path: Path, samples: list[Sample]) -> None:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    ingest = IngestService(inbox=inbox, enqueue=lambda _i, _p: None)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    reader = FhirReader(EHR, timeout_s=1, transport=httpx.MockTransport(refuse))
    receiver = SubscriptionReceiver(ingest=ingest, topics=frozenset({TOPIC}), reader=reader)
    app = create_app(ingest=ingest, inbox=inbox, health=dict, subscriptions=receiver, reports=None)
    resp = TestClient(app).post(URL, json=notification("Observation/x"), headers=FHIR)
    assert resp.status_code == 503


def test_malformed_notifications_are_422(setup: Setup) -> None:
    client, queued = setup.client, setup.queued
    assert client.post(URL, content=b"{", headers=FHIR).status_code == 422
    empty = notification()
    resp = client.post(URL, json=empty, headers=FHIR)
    assert resp.status_code == 422 and "no focus" in resp.json()["issue"][0]["diagnostics"]
    wrong = notification("Observation/x")
    wrong["entry"][0]["resource"]["parameter"][3]["valueCode"] = "nonsense"
    assert client.post(URL, json=wrong, headers=FHIR).status_code == 422
    assert client.post(URL, content=b"{}", headers={"Content-Type": "text/plain"}).status_code == (
        415
    )
    assert queued == []


def test_notifications_need_the_bearer_token_when_configured(
    tmp_path: Path,
) -> None:
    def deny(request: Request) -> None:
        raise HTTPException(401, "bearer token required")

    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    ingest = IngestService(inbox=inbox, enqueue=lambda _i, _p: None)
    receiver = SubscriptionReceiver(ingest=ingest, topics=frozenset({TOPIC}), reader=None)
    app = create_app(
        ingest=ingest,
        inbox=inbox,
        health=dict,
        intake_auth=deny,
        subscriptions=receiver,
        reports=None,
    )
    resp = TestClient(app).post(URL, json=notification(kind="heartbeat"), headers=FHIR)
    assert resp.status_code == 401


def test_metadata_documents_the_endpoint_and_topics(
    setup: Setup,
) -> None:
    client = setup.client
    cs = client.get("/fhir/metadata").json()
    (server,) = [r for r in cs["rest"] if r["mode"] == "server"]
    assert TOPIC in server["documentation"]
    assert "DiagnosticReport" in {r["type"] for r in server["resource"]}
