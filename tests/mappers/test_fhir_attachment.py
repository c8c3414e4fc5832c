"""ECG Observations whose waveform is in an attachment: a Binary or DocumentReference in the
Bundle, a contained Binary, or an R5 valueAttachment; DICOM, aECG and HL7 v2 inside."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from inference.record import Sex
from mappers.aecg_out import build_aecg
from mappers.dicom_ecg import build_dicom_ecg
from mappers.errors import DataTypeError, MissingFieldError, XmlSecurityError
from mappers.fhir_attachment import waveform_entries
from mappers.fhir_r4 import bundle_to_records, observation_to_record
from mappers.hl7v2 import build_oru_r01
from tests.mappers.conftest import small_record

ECG_CODE = {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.24", "code": "131328"}]}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def observation(**fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "ecg-7",
        "status": "final",
        "code": ECG_CODE,
        "identifier": [{"system": "urn:hosp:ecg", "value": "E-7"}],
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-02T03:04:05Z",
        **fields,
    }


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"system": "urn:hosp:mrn", "value": "MRN-1"}],
    "gender": "female",
    "birthDate": "1960-05-01",
}


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"urn:uuid:{r['resourceType']}-{r.get('id', i)}", "resource": r}
            for i, r in enumerate(resources)
        ],
    }


def test_dicom_in_a_binary_of_the_bundle() -> None:
    record = small_record(n_samples=500)
    binary = {"resourceType": "Binary", "id": "b1", "contentType": "application/dicom"}
    binary["data"] = b64(build_dicom_ecg(record))
    obs = observation(derivedFrom=[{"reference": "Binary/b1"}])
    [(index, back)] = bundle_to_records(bundle(obs, binary, PATIENT))
    assert index == 0
    np.testing.assert_allclose(back.signals_mv, record.signals_mv, atol=1e-3)
    assert back.fs_hz == record.fs_hz
    # identity, subject and demographics are the Observation's and its Patient's
    assert back.record_id == "urn:hosp:ecg|E-7"
    assert back.patient is not None and back.patient.value == "MRN-1"
    assert back.demographics.sex is Sex.FEMALE
    assert back.demographics.age_years == 63
    assert back.identifier("observation") == "Observation/ecg-7"


def test_aecg_inline_as_r5_value_attachment() -> None:
    record = small_record(n_samples=500)
    obs = observation(valueAttachment={"contentType": "text/xml", "data": b64(build_aecg(record))})
    back = observation_to_record(obs)
    np.testing.assert_allclose(back.signals_mv, record.signals_mv, atol=1e-3)
    assert back.record_id == "urn:hosp:ecg|E-7"
    # no FHIR Patient: the attachment's own demographics fill in
    assert back.demographics.sex is record.demographics.sex


def test_hl7_v2_message_via_document_reference_and_binary_url() -> None:
    record = small_record(n_samples=500)
    message = build_oru_r01(record, control_id="C1", now=datetime(2024, 1, 2, tzinfo=UTC))
    doc = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "status": "current",
        "content": [{"attachment": {"contentType": "x-application/hl7-v2+er7", "url": "#w"}}],
    }
    binary = {"resourceType": "Binary", "id": "w", "contentType": "text/plain"}
    binary["data"] = b64(message)
    obs = observation(contained=[doc, binary], derivedFrom=[{"reference": "#d1"}])
    back = observation_to_record(obs)
    np.testing.assert_allclose(back.signals_mv, record.signals_mv, atol=1e-3)


def locate(call: Any, error: type[Exception]) -> str:
    with pytest.raises(error) as info:
        call()
    return str(getattr(info.value, "location", ""))


def test_waveform_elsewhere_is_a_clear_error_not_a_fetch() -> None:
    obs = observation(derivedFrom=[{"reference": "https://ehr.example/fhir/Binary/99"}])
    loc = locate(lambda: bundle_to_records(bundle(obs, PATIENT)), MissingFieldError)
    assert loc == "Bundle.entry[0].resource.derivedFrom[0].reference"


def test_derived_from_another_observation_is_not_a_waveform() -> None:
    obs = observation(derivedFrom=[{"reference": "Observation/other"}])
    loc = locate(lambda: observation_to_record(obs), MissingFieldError)
    assert loc == "Observation.component"


@pytest.mark.parametrize(
    ("data", "error", "location"),
    [
        ("not base64!", DataTypeError, "Observation.valueAttachment.data"),
        (b64(b"%PDF-1.7 a picture of an ECG"), DataTypeError, "Observation.valueAttachment.data"),
        ("", MissingFieldError, "Observation.valueAttachment.data"),
    ],
)
def test_bad_attachment_data(data: str, error: type[Exception], location: str) -> None:
    obs = observation(valueAttachment={"contentType": "application/pdf", "data": data})
    assert locate(lambda: observation_to_record(obs), error) == location


def test_unsafe_xml_inside_keeps_the_reader_error_and_its_place() -> None:
    xml = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><AnnotatedECG/>'
    obs = observation(valueAttachment={"contentType": "text/xml", "data": b64(xml)})
    loc = locate(lambda: observation_to_record(obs), XmlSecurityError)
    assert loc.startswith("Observation.valueAttachment.data > ")


def test_waveform_entries_follow_the_observation_only() -> None:
    obs = observation(derivedFrom=[{"reference": "DocumentReference/d1"}])
    doc = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "content": [{"attachment": {"url": "urn:uuid:w"}}],
    }
    entries = [
        {"resource": obs},
        {"resource": {"resourceType": "Binary", "id": "unrelated"}},
        {"resource": doc},
        {"fullUrl": "urn:uuid:w", "resource": {"resourceType": "Binary"}},
        {"resource": PATIENT},
    ]
    assert waveform_entries(obs, entries) == [2, 3]
    assert waveform_entries(observation(), entries) == []
