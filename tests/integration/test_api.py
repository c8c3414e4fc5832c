"""The HTTP API through FastAPI's test client (SQLite inbox, in-memory queue twin)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from integration.api import create_app
from integration.inbox import Inbox
from integration.ingest import IngestService, decode_item
from integration.samples import Sample, load_samples
from mappers.dicom_ecg import build_dicom_ecg
from mappers.fhir_r4 import patient_resource, record_to_observation

FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def sample() -> Sample:
    return load_samples()[0]


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    queued: list[str] = []
    ingest = IngestService(inbox=inbox, enqueue=lambda item_id, _p: queued.append(item_id))
    app = create_app(ingest=ingest, inbox=inbox, health=lambda: {"status": "ok"})
    return TestClient(app)


def _issue(resp: Any) -> dict[str, Any]:
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    return dict(body["issue"][0])


def test_observation_is_accepted_with_a_location_to_poll(
    client: TestClient, sample: Sample
) -> None:
    resp = client.post("/fhir/Observation", json=record_to_observation(sample.record), headers=FHIR)
    assert resp.status_code == 202
    status = client.get(resp.headers["Location"]).json()
    assert status["status"] == "accepted"
    assert status["record_id"] == sample.record.record_id


def test_same_observation_twice_is_one_item(client: TestClient, sample: Sample) -> None:
    obs = record_to_observation(sample.record)
    a = client.post("/fhir/Observation", json=obs, headers=FHIR)
    b = client.post("/fhir/Observation", json=obs, headers=FHIR)
    assert a.headers["Location"] == b.headers["Location"]
    assert b.json()["accepted"][0]["replay"] is True


def test_bundle_with_patient(client: TestClient, sample: Sample) -> None:
    entries = [{"resource": record_to_observation(sample.record)}]
    patient = patient_resource(sample.record)
    assert patient is not None
    entries.append({"resource": patient})
    resp = client.post(
        "/fhir",
        json={"resourceType": "Bundle", "type": "collection", "entry": entries},
        headers=FHIR,
    )
    assert resp.status_code == 202


def test_observation_without_sampled_data_is_422_naming_the_element(
    client: TestClient, sample: Sample
) -> None:
    obs = record_to_observation(sample.record)
    del obs["component"][3]["valueSampledData"]
    resp = client.post("/fhir/Observation", json=obs, headers=FHIR)
    assert resp.status_code == 422
    issue = _issue(resp)
    assert "component[3]" in issue["expression"][0]


def test_mismatched_lengths_are_422(client: TestClient, sample: Sample) -> None:
    obs = record_to_observation(sample.record)
    sd = obs["component"][5]["valueSampledData"]
    sd["data"] = " ".join(sd["data"].split()[:-10])
    resp = client.post("/fhir/Observation", json=obs, headers=FHIR)
    assert resp.status_code == 422
    assert "component[5]" in _issue(resp)["expression"][0]


def test_unknown_units_are_422(client: TestClient, sample: Sample) -> None:
    obs = record_to_observation(sample.record)
    origin = obs["component"][0]["valueSampledData"]["origin"]
    origin["unit"] = origin["code"] = "mmHg"
    resp = client.post("/fhir/Observation", json=obs, headers=FHIR)
    assert resp.status_code == 422
    assert _issue(resp)["code"] == "value"


def test_wrong_resource_type_and_content_type(client: TestClient) -> None:
    resp = client.post("/fhir/Observation", json={"resourceType": "Patient"}, headers=FHIR)
    assert resp.status_code == 422
    resp = client.post("/fhir/Observation", content=b"x", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415
    resp = client.post("/fhir/Observation", content=b"{not json", headers=FHIR)
    assert resp.status_code == 422


def test_unknown_status_is_404_and_health_answers(client: TestClient) -> None:
    assert client.get("/ecg/nope").status_code == 404
    assert client.get("/health").json() == {"status": "ok"}


def test_bundle_with_the_waveform_in_a_binary_is_stored_whole(
    client: TestClient, sample: Sample, tmp_path: Path
) -> None:
    obs = record_to_observation(sample.record)
    del obs["component"]
    obs["derivedFrom"] = [{"reference": "Binary/w1"}]
    binary = {
        "resourceType": "Binary",
        "id": "w1",
        "contentType": "application/dicom",
        "data": base64.b64encode(build_dicom_ecg(sample.record)).decode(),
    }
    resp = client.post(
        "/fhir",
        json={
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": obs}, {"resource": binary}],
        },
        headers=FHIR,
    )
    assert resp.status_code == 202, resp.text
    # the worker re-reads the stored payload: the Binary must have been kept with it
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    item_id = resp.json()["accepted"][0]["id"]
    item = inbox.get(item_id)
    assert item is not None
    again = decode_item(item)
    assert again.record_id == sample.record.record_id
    assert abs(again.signals_mv - sample.record.signals_mv).max() < 1e-3


def test_observation_pointing_at_an_external_binary_is_422(
    client: TestClient, sample: Sample
) -> None:
    obs = record_to_observation(sample.record)
    del obs["component"]
    obs["derivedFrom"] = [{"reference": "https://ehr.example/fhir/Binary/9"}]
    resp = client.post("/fhir/Observation", json=obs, headers=FHIR)
    assert resp.status_code == 422
    assert _issue(resp)["expression"][0] == "Observation.derivedFrom[0].reference"


def test_each_ecg_of_a_bundle_is_stored_with_its_own_waveform_only(
    client: TestClient, sample: Sample, tmp_path: Path
) -> None:
    """Two ECGs with their Binaries in one Bundle: each is stored with the Binary it names,
    so sending one of them again on its own (with its Binary) is a replay, not a conflict."""
    entries = []
    for n in range(2):
        obs = record_to_observation(sample.record, observation_id=f"o{n}")
        obs["identifier"] = [{"system": "urn:test:ecg", "value": f"E{n}"}]
        del obs["component"]
        obs["derivedFrom"] = [{"reference": f"urn:uuid:bin-{n}"}]
        binary = {
            "resourceType": "Binary",
            "contentType": "application/dicom",
            "data": base64.b64encode(build_dicom_ecg(sample.record)).decode(),
        }
        entries += [{"resource": obs}, {"fullUrl": f"urn:uuid:bin-{n}", "resource": binary}]
    resp = client.post(
        "/fhir",
        json={"resourceType": "Bundle", "type": "collection", "entry": entries},
        headers=FHIR,
    )
    assert resp.status_code == 202, resp.text
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    for n, accepted in enumerate(resp.json()["accepted"]):
        item = inbox.get(accepted["id"])
        assert item is not None
        stored = [e["resource"]["resourceType"] for e in json.loads(item.payload)["entry"]]
        assert stored == ["Observation", "Binary"]
        assert json.loads(item.payload)["entry"][1]["fullUrl"] == f"urn:uuid:bin-{n}"
    again = client.post(
        "/fhir",
        json={"resourceType": "Bundle", "type": "collection", "entry": entries[:2]},
        headers=FHIR,
    )
    assert again.status_code == 202, again.text
    assert again.json()["accepted"][0]["replay"] is True
