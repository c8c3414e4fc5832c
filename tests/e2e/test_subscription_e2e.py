"""A rest-hook Subscription notification from the EHR to a readable report, on real components.

The Medplum-based FHIR server process plays the EHR: it holds an ECG Observation (a real
PTB-XL record) and its Patient, and receives the reports. A real `redis-server`, a separate
`ecgbridge worker` and `ecgbridge serve`: the notification (R4 backport, id-only) goes to
serve over HTTP, serve reads the Observation and Patient from the EHR, the worker analyses
and writes the report, and serve answers ``GET /fhir/DiagnosticReport/{id}`` and
``?subject=Patient/<id>`` with it. The same notification again queues nothing new.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from integration.samples import load_samples
from mappers.fhir_r4 import patient_resource, record_to_observation
from tests.support.processes import wait_until
from tests.support.stack import EcgbridgeStack, ecgbridge_stack

pytestmark = pytest.mark.e2e
TOPIC = "https://ehr.example.org/SubscriptionTopic/ecg-observation-create"
FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EcgbridgeStack]:
    with ecgbridge_stack(
        tmp_path_factory.mktemp("subscription-e2e"), fhir=True, subscription_topics=TOPIC
    ) as stack:
        yield stack


def _put(base: str, resource: dict[str, Any]) -> None:
    resp = httpx.put(
        f"{base}/{resource['resourceType']}/{resource['id']}",
        json=resource,
        headers=FHIR,
        timeout=30,
    )
    assert resp.status_code in (200, 201), resp.text


def _notification(focus: str, number: int) -> dict[str, Any]:
    status = {
        "resourceType": "Parameters",
        "meta": {
            "profile": [
                "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                "backport-subscription-status-r4"
            ]
        },
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": "Subscription/ecg"}},
            {"name": "topic", "valueCanonical": TOPIC},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": str(number)},
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(number)},
                    {"name": "focus", "valueReference": {"reference": focus}},
                ],
            },
        ],
    }
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b7f6c1e-4a59-4b8e-9a51-0c7d3e2f1a01",
                "resource": status,
                "request": {"method": "GET", "url": "Subscription/ecg/$status"},
                "response": {"status": "200"},
            }
        ],
    }


def test_notified_observation_is_fetched_analysed_and_its_report_readable(
    stack: EcgbridgeStack,
) -> None:
    sample = load_samples()[0]
    patient = patient_resource(sample.record)
    assert patient is not None
    obs = record_to_observation(sample.record) | {"id": "sub-ecg-1"}
    ehr = stack.require_fhir().base_url
    _put(ehr, patient)
    _put(ehr, obs)
    focus = f"{ehr}/Observation/sub-ecg-1"
    url = f"{stack.serve.http_url}/fhir/subscription-notification"

    resp = httpx.post(url, json=_notification(focus, 1), headers=FHIR, timeout=30)
    assert resp.status_code == 202, resp.text
    (accepted,) = resp.json()["accepted"]
    assert accepted["replay"] is False
    location = f"{stack.serve.http_url}{accepted['location']}"
    status: dict[str, Any] = {}

    def done() -> bool:
        status.update(httpx.get(location, timeout=5).json())
        assert status["status"] != "dead_letter", status
        return bool(status["status"] == "done")

    wait_until(done, timeout_s=120, what="notified ECG done")
    assert status["channel"] == "subscription"
    report_id = status["report"].split("/")[1]

    read = httpx.get(f"{stack.serve.http_url}/fhir/DiagnosticReport/{report_id}", timeout=10)
    assert read.status_code == 200, read.text
    report = read.json()
    assert report["id"] == report_id and report["status"] == "final"
    assert report["subject"]["reference"] == patient["resourceType"] + "/" + patient["id"]
    at_ehr = httpx.get(f"{ehr}/DiagnosticReport/{report_id}", timeout=10).json()
    assert report == at_ehr  # what ecgbridge wrote, not a re-rendering

    search = httpx.get(
        f"{stack.serve.http_url}/fhir/DiagnosticReport",
        params={"subject": f"Patient/{patient['id']}"},
        timeout=10,
    ).json()
    assert search["type"] == "searchset"
    assert [e["resource"]["id"] for e in search["entry"]] == [report_id]

    missing = httpx.get(f"{stack.serve.http_url}/fhir/DiagnosticReport/ecg-nope", timeout=10)
    assert missing.status_code == 404

    # the EHR sends the same notification again: the same ECG, nothing new queued
    again = httpx.post(url, json=_notification(focus, 1), headers=FHIR, timeout=30)
    assert again.status_code == 202
    (replay,) = again.json()["accepted"]
    assert replay["id"] == accepted["id"] and replay["replay"] is True
    inbox = httpx.get(f"{stack.serve.http_url}/health", timeout=5).json()["inbox"]
    assert inbox == {"done": 1}, inbox


def test_unknown_topic_is_refused_over_http(stack: EcgbridgeStack) -> None:
    body = _notification("Observation/sub-ecg-1", 2)
    body["entry"][0]["resource"]["parameter"][1]["valueCanonical"] = "https://x.example/t"
    resp = httpx.post(
        f"{stack.serve.http_url}/fhir/subscription-notification",
        json=body,
        headers=FHIR,
        timeout=30,
    )
    assert resp.status_code == 422
    assert "https://x.example/t" in resp.json()["issue"][0]["diagnostics"]
