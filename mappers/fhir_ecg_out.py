"""EcgRecord -> FHIR R4 (4.0.1) ECG Observation and Patient (the inverse of `mappers.fhir_r4`).

The Observation follows the core spec's ECG example: code MDC 131328 (MDC_ECG_ELEC_POTL),
category ``procedure``, one component per lead coded MDC (``131329`` = MDC_ECG_ELEC_POTL_I ...)
with `valueSampledData`: origin 0 mV, factor 0.001, period 1000 / fs ms, dimensions 1, data in
microvolts (integers when the record allows; see `mappers.sample_codec`), so values read back
exactly. A record id ``<uri>|<value>`` becomes identifier system + value; any other record id
becomes a value without system. `patient_resource` approximates birthDate as the acquisition
date minus the age in whole years (ecgbridge keeps no birth dates). Output is validated with
`fhir.resources.R4B` before it is returned.
"""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from inference.record import EcgRecord, PatientRef, Sex
from mappers.fhir_json import MDC_SYSTEM, UCUM, resource_json, validate_resource
from mappers.leads import MDC_CODES, MDC_REFIDS
from mappers.sample_codec import format_samples

ECG_CODE = "131328"
ECG_REFID = "MDC_ECG_ELEC_POTL"


def _subject_json(patient: PatientRef | None) -> dict[str, Any] | None:
    if patient is None:
        return None
    out: dict[str, Any] = {}
    if patient.reference:
        out["reference"] = patient.reference
    if patient.value:
        out["identifier"] = {"value": patient.value}
        if patient.system:
            out["identifier"]["system"] = patient.system
    return out


def _identifier_json(record_id: str) -> dict[str, str]:
    system, sep, value = record_id.rpartition("|")
    if sep and system and value and (":" in system):
        return {"system": system, "value": value}
    return {"value": record_id}


def record_to_observation(
    record: EcgRecord, *, observation_id: str | None = None
) -> dict[str, Any]:
    """An R4 ECG Observation (validated JSON) carrying `record`; the inverse of
    `observation_to_record`. Data in microvolts with factor 0.001 and origin 0 mV."""
    components = []
    for lead in record.lead_names:
        code: dict[str, Any] = {"text": lead}
        if lead in MDC_CODES:
            code["coding"] = [
                {"system": MDC_SYSTEM, "code": str(MDC_CODES[lead]), "display": MDC_REFIDS[lead]}
            ]
        components.append(
            {
                "code": code,
                "valueSampledData": {
                    "origin": {"value": 0, "unit": "mV", "system": UCUM, "code": "mV"},
                    "period": Decimal(repr(1000.0 / record.fs_hz)),
                    "factor": Decimal("0.001"),
                    "dimensions": 1,
                    "data": format_samples(record.lead(lead), "uV", " "),
                },
            }
        )
    data: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [_identifier_json(record.record_id)],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "procedure",
                        "display": "Procedure",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": MDC_SYSTEM, "code": ECG_CODE, "display": ECG_REFID}],
            "text": "12-lead ECG",
        },
        "component": components,
    }
    if observation_id:
        data["id"] = observation_id
    subject = _subject_json(record.patient)
    if subject:
        data["subject"] = subject
    if record.acquired_at is not None:
        when = record.acquired_at
        data["effectiveDateTime"] = (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()
    return resource_json(validate_resource(Observation, data, path="Observation"))


def patient_resource(record: EcgRecord, *, patient_id: str | None = None) -> dict[str, Any] | None:
    """A minimal R4 Patient (identifier, gender, approximate birthDate) for `record`, or None
    when the record has no patient. The id is `patient_id`, else taken from a ``Patient/<id>``
    reference."""
    if record.patient is None:
        return None
    data: dict[str, Any] = {"resourceType": "Patient"}
    ref = record.patient.reference or ""
    if patient_id:
        data["id"] = patient_id
    elif ref.startswith("Patient/") and ref.count("/") == 1:
        data["id"] = ref.split("/", 1)[1]
    if record.patient.value:
        ident: dict[str, str] = {"value": record.patient.value}
        if record.patient.system:
            ident["system"] = record.patient.system
        data["identifier"] = [ident]
    demo = record.demographics
    if demo.sex is not Sex.UNKNOWN:
        data["gender"] = demo.sex.value
    if demo.age_years is not None and record.acquired_at is not None:
        at = record.acquired_at.date()
        years = int(demo.age_years)
        try:
            born = at.replace(year=at.year - years)
        except ValueError:  # 29 February
            born = at.replace(year=at.year - years, day=28)
        data["birthDate"] = born.isoformat()
    return resource_json(validate_resource(Patient, data, path="Patient"))
