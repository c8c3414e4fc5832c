"""FHIR R4 (4.0.1) ECG Observation / Bundle mapping and the report resources."""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.provenance import Provenance
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.record import LEADS_12, Demographics, EcgRecord, PatientRef, Sex
from inference.result import AnalysisResult, QualityReport, TerritoryFinding, TriageResult
from mappers.errors import (
    DataTypeError,
    FhirResourceError,
    LeadError,
    MappingError,
    MissingFieldError,
    WaveformError,
)
from mappers.fhir_r4 import (
    ReportResources,
    build_report,
    bundle_to_records,
    observation_to_record,
    patient_resource,
    record_to_observation,
    report_bundle,
    resource_json,
)
from mappers.leads import LOINC_LEAD_PARTS, SNOMED_LEADS, canonical_lead
from tests.mappers.conftest import NOW, small_record

# --- round trips ------------------------------------------------------------------------


def test_record_observation_record_round_trip_is_lossless(record: EcgRecord) -> None:
    obs = record_to_observation(record, observation_id="ecg-1")
    Observation.model_validate(obs)
    assert obs["code"]["coding"][0]["code"] == "131328"
    assert obs["component"][0]["code"]["coding"][0]["code"] == "131329"
    assert obs["component"][2]["code"]["coding"][0]["code"] == "131389"
    sd = obs["component"][0]["valueSampledData"]
    assert sd["origin"] == {
        "value": 0,
        "unit": "mV",
        "system": "http://unitsofmeasure.org",
        "code": "mV",
    }
    assert (sd["period"], sd["factor"], sd["dimensions"]) == (2, 0.001, 1)
    assert all(v.lstrip("-").isdigit() for v in sd["data"].split(" "))  # integer microvolts
    back = observation_to_record(json.dumps(obs), patient=patient_resource(record))
    assert np.array_equal(back.signals_mv, record.signals_mv)
    assert back.fs_hz == 500.0
    assert back.record_id == record.record_id
    assert back.acquired_at == record.acquired_at
    assert back.patient == record.patient
    assert back.demographics == record.demographics
    assert dict(back.identifiers) == {"observation": "Observation/ecg-1", "version": ""}


def test_round_trip_of_odd_rate_and_system_identifier() -> None:
    base = small_record(n_samples=360, fs_hz=360.0)
    rec = EcgRecord(base.signals_mv, LEADS_12, 360.0, "http://cart.example/ecg|A-7")
    obs = record_to_observation(rec)
    assert obs["identifier"] == [{"system": "http://cart.example/ecg", "value": "A-7"}]
    back = observation_to_record(obs)
    assert back.fs_hz == 360.0
    assert back.record_id == "http://cart.example/ecg|A-7"
    assert back.patient is None


def test_patient_resource() -> None:
    rec = small_record()
    pat = patient_resource(rec, patient_id="p-1")
    assert pat is not None
    Patient.model_validate(pat)
    assert pat == {
        "resourceType": "Patient",
        "id": "p-1",
        "identifier": [{"system": "HOSP", "value": "P1"}],
        "gender": "male",
        "birthDate": "1974-01-02",
    }
    no_patient = EcgRecord(rec.signals_mv, LEADS_12, rec.fs_hz, "x")
    assert patient_resource(no_patient) is None


# --- inbound shapes ---------------------------------------------------------------------


def ecg_observation(**changes: Any) -> dict[str, Any]:
    obs = record_to_observation(small_record(), observation_id="o1")
    obs.update(changes)
    return obs


def test_r5_sampled_data_interval_is_accepted() -> None:
    obs = ecg_observation()
    for comp in obs["component"]:
        sd = comp["valueSampledData"]
        sd["interval"] = sd.pop("period") / 1000.0
        sd["intervalUnit"] = "s"
    assert observation_to_record(obs).fs_hz == 100.0


@pytest.mark.parametrize(
    ("system", "codes"),
    [
        ("http://loinc.org", LOINC_LEAD_PARTS),
        ("http://snomed.info/sct", {str(code): lead for code, lead in SNOMED_LEADS.items()}),
    ],
)
def test_leads_coded_by_loinc_or_snomed_are_read(system: str, codes: dict[str, str]) -> None:
    by_lead = {lead: code for code, lead in codes.items()}
    obs = ecg_observation()
    lead_order = []
    for comp in reversed(obs["component"]):  # order must not matter either
        lead = canonical_lead(comp["code"]["coding"][0]["code"])
        comp["code"] = {"coding": [{"system": system, "code": by_lead[lead]}]}
        lead_order.append(lead)
    obs["component"] = list(reversed(obs["component"]))
    back = observation_to_record(obs)
    np.testing.assert_array_equal(back.signals_mv, small_record().signals_mv)
    assert sorted(lead_order) == sorted(LEADS_12)


def test_core_example_style_origin_and_factor() -> None:
    obs = ecg_observation()
    for comp in obs["component"]:
        sd = comp["valueSampledData"]
        values = np.array(sd["data"].split(), dtype=np.float64)  # microvolts
        sd["origin"] = {"value": 2048, "code": "uV", "system": "http://unitsofmeasure.org"}
        sd["factor"] = 2.0
        sd["data"] = " ".join(str(v) for v in (values - 2048) / 2.0)
        comp["code"] = {"coding": [{"display": comp["code"]["coding"][0]["display"]}]}
    back = observation_to_record(obs)
    assert np.abs(back.signals_mv - small_record().signals_mv).max() < 1e-6


def test_effective_instant_and_subject_identifier() -> None:
    obs = ecg_observation(effectiveInstant="2015-02-19T09:30:35+01:00")
    del obs["effectiveDateTime"]
    obs["subject"] = {"identifier": {"system": "urn:oid:1.2", "value": "M9"}}
    back = observation_to_record(obs, patient={"resourceType": "Patient", "birthDate": "1960"})
    assert back.acquired_at == datetime(2015, 2, 19, 9, 30, 35, tzinfo=timezone(timedelta(hours=1)))
    assert back.patient == PatientRef(system="urn:oid:1.2", value="M9")
    assert back.demographics == Demographics(age_years=55.0, sex=Sex.UNKNOWN)


def test_bundle_resolves_patients_and_names_entries() -> None:
    rec = small_record()
    obs_a = record_to_observation(rec, observation_id="a")
    obs_a["subject"] = {"reference": "urn:uuid:5a1c"}
    obs_b = record_to_observation(rec, observation_id="b")
    obs_b["subject"] = {"reference": "Patient/p2"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5a1c",
                "resource": {
                    "resourceType": "Patient",
                    "gender": "female",
                    "birthDate": "1944-01-02",
                },
            },
            {"resource": obs_a},
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "heart rate"},
                }
            },
            {"resource": obs_b},
            {"resource": {"resourceType": "Patient", "id": "p2", "gender": "male"}},
        ],
    }
    Bundle.model_validate(bundle)
    out = bundle_to_records(json.dumps(bundle).encode())
    assert [i for i, _ in out] == [1, 3]
    assert out[0][1].demographics == Demographics(age_years=80.0, sex=Sex.FEMALE)
    assert out[1][1].demographics == Demographics(age_years=None, sex=Sex.MALE)
    assert out[1][1].patient == PatientRef(reference="Patient/p2")

    bad: Any = copy.deepcopy(bundle)
    bad["entry"][3]["resource"]["component"][4]["valueSampledData"]["period"] = 3
    with pytest.raises(WaveformError) as info:
        bundle_to_records(bad)
    assert info.value.location == "Bundle.entry[3].resource.component[4].valueSampledData.period"

    bad["entry"][0]["resource"]["birthDate"] = "2999-01-01"
    with pytest.raises(DataTypeError) as info2:
        bundle_to_records(bad)
    assert info2.value.location == "Bundle.entry[0].resource.birthDate"


def test_bundle_without_ecg() -> None:
    with pytest.raises(MissingFieldError):
        bundle_to_records({"resourceType": "Bundle", "type": "collection", "entry": []})
    with pytest.raises(FhirResourceError):
        bundle_to_records(ecg_observation())


# --- bad inputs -------------------------------------------------------------------------


def expect(obs: Any, error: type[MappingError], location: str) -> MappingError:
    with pytest.raises(error) as info:
        observation_to_record(obs)
    assert info.value.location == location
    return info.value


def sd_of(obs: dict[str, Any], i: int) -> dict[str, Any]:
    sd: dict[str, Any] = obs["component"][i]["valueSampledData"]
    return sd


def test_invalid_r4_names_the_path() -> None:
    obs = ecg_observation()
    sd_of(obs, 2)["period"] = "fast"
    err = expect(obs, FhirResourceError, "Observation.component[2].valueSampledData.period")
    assert err.fhir_issue == "structure"


def test_not_json_and_wrong_resource_type() -> None:
    expect(b"{not json", FhirResourceError, "Observation")
    expect("[]", FhirResourceError, "Observation")
    expect({"resourceType": "Patient"}, FhirResourceError, "Observation.resourceType")


def test_not_an_ecg_code() -> None:
    obs = ecg_observation(code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]})
    expect(obs, FhirResourceError, "Observation.code")


def test_missing_sampled_data() -> None:
    obs = ecg_observation()
    del obs["component"][5]["valueSampledData"]
    obs["component"][5]["valueString"] = "n/a"
    expect(obs, MissingFieldError, "Observation.component[5].valueSampledData")


def test_no_components() -> None:
    obs = ecg_observation()
    del obs["component"]
    expect(obs, MissingFieldError, "Observation.component")


def test_non_voltage_and_missing_units() -> None:
    obs = ecg_observation()
    sd_of(obs, 1)["origin"] = {
        "value": 0,
        "unit": "mmHg",
        "code": "mm[Hg]",
        "system": "http://unitsofmeasure.org",
    }
    expect(obs, WaveformError, "Observation.component[1].valueSampledData.origin.code")
    sd_of(obs, 1)["origin"] = {"value": 0}
    expect(obs, MissingFieldError, "Observation.component[1].valueSampledData.origin.code")


def test_mismatched_lengths_and_periods() -> None:
    obs = ecg_observation()
    sd_of(obs, 7)["data"] = sd_of(obs, 7)["data"].rsplit(" ", 1)[0]
    err = expect(obs, WaveformError, "Observation.component[7].valueSampledData.data")
    assert "V2" in str(err)
    obs = ecg_observation()
    sd_of(obs, 9)["period"] = 4
    expect(obs, WaveformError, "Observation.component[9].valueSampledData.period")


def test_non_numeric_data_and_error_markers() -> None:
    obs = ecg_observation()
    sd_of(obs, 3)["data"] = "1 2 E 4"
    expect(obs, WaveformError, "Observation.component[3].valueSampledData.data")


def test_missing_and_duplicate_leads() -> None:
    obs = ecg_observation()
    del obs["component"][11]
    err = expect(obs, LeadError, "Observation.component")
    assert "V6" in str(err)
    obs = ecg_observation()
    obs["component"].append(copy.deepcopy(obs["component"][0]))
    expect(obs, LeadError, "Observation.component[12].code")


def test_dimensions_other_than_one() -> None:
    obs = ecg_observation()
    sd_of(obs, 0)["dimensions"] = 2
    expect(obs, WaveformError, "Observation.component[0].valueSampledData.dimensions")


def test_domain_validation_becomes_waveform_error() -> None:
    obs = ecg_observation()
    for i in range(12):
        sd_of(obs, i)["origin"]["code"] = "V"
        sd_of(obs, i)["origin"]["unit"] = "V"
    expect(obs, WaveformError, "Observation.component")


def test_no_identity() -> None:
    obs = ecg_observation()
    del obs["id"]
    del obs["identifier"]
    expect(obs, MissingFieldError, "Observation.identifier")


# --- report -----------------------------------------------------------------------------


def analysis(positive: bool = True) -> AnalysisResult:
    return AnalysisResult(
        record_id="ptbxl-9879",
        model_version="ecgnet-1.2.0+sha256.ab12cd",
        quality=QualityReport(ok=True),
        triage=TriageResult(probability=0.83 if positive else 0.12, threshold=0.4),
        territories=(
            TerritoryFinding("anterior", "LAD", 0.71 if positive else 0.1, 0.5),
            TerritoryFinding("inferior", "RCA", 0.2, 0.5),
            TerritoryFinding("lateral", "LCx", 0.1, 0.5),
        ),
        analysed_at=NOW,
    )


def validate_all(res: ReportResources) -> dict[str, Any]:
    report = resource_json(res.diagnostic_report)
    DiagnosticReport.model_validate(report)
    for obs in res.observations:
        Observation.model_validate(resource_json(obs))
    Provenance.model_validate(resource_json(res.provenance))
    return report


def test_positive_report(record: EcgRecord) -> None:
    res = build_report(analysis(True), record, report_id="rep-1", issued=NOW)
    report = validate_all(res)
    assert report["id"] == "rep-1"
    assert report["identifier"] == [{"system": "urn:ecgbridge:report", "value": "rep-1"}]
    assert report["status"] == "final"
    assert report["category"][0]["coding"][0]["code"] == "EC"
    assert report["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "11524-6",
        "display": "EKG study",
    }
    assert report["subject"] == {
        "identifier": {"system": "urn:oid:1.2.276.0.1", "value": "MRN-0042"}
    }
    assert report["effectiveDateTime"] == "2024-03-05T14:12:07Z"
    assert report["issued"] == "2024-03-05T14:30:00Z"
    assert report["result"] == [
        {"reference": "Observation/rep-1-triage"},
        {"reference": "Observation/rep-1-territory-lad"},
        {"reference": "Observation/rep-1-territory-rca"},
        {"reference": "Observation/rep-1-territory-lcx"},
    ]
    assert report["conclusion"].startswith("AI decision support:")
    assert "anterior (LAD)" in report["conclusion"]
    assert report["conclusion"].endswith("Not a diagnosis.")
    assert report["conclusionCode"][0]["coding"][0]["code"] == "164865005"
    assert report["meta"]["security"][0]["code"] == "AIAST"

    triage = resource_json(res.observations[0])
    assert triage["id"] == "rep-1-triage"
    assert triage["code"]["text"] == "Acute MI / injury probability"
    assert triage["valueQuantity"] == {
        "value": 83.0,
        "unit": "%",
        "system": "http://unitsofmeasure.org",
        "code": "%",
    }
    assert triage["interpretation"][0]["coding"][0]["code"] == "H"
    lad = resource_json(res.observations[1])
    assert "LAD" in lad["code"]["text"]
    assert lad["bodySite"]["text"] == "Left anterior descending coronary artery"
    assert resource_json(res.observations[2])["interpretation"][0]["coding"][0]["code"] == "N"

    prov = resource_json(res.provenance)
    assert prov["id"] == "rep-1-provenance"
    assert prov["target"][0] == {"reference": "DiagnosticReport/rep-1"}
    assert len(prov["target"]) == 5
    assert prov["recorded"] == "2024-03-05T14:30:00Z"
    agent = prov["agent"][0]
    assert agent["type"]["coding"][0]["code"] == "author"
    assert agent["who"]["display"] == "ecgbridge model ecgnet-1.2.0+sha256.ab12cd"
    assert agent["who"]["identifier"]["value"] == "ecgnet-1.2.0+sha256.ab12cd"


def test_negative_report_has_no_conclusion_code(record: EcgRecord) -> None:
    report = validate_all(build_report(analysis(False), record, report_id="rep-2", issued=NOW))
    assert "conclusionCode" not in report
    assert "not detected" in report["conclusion"]
    assert "Not a diagnosis." in report["conclusion"]


def test_quality_refused_report(record: EcgRecord) -> None:
    refused = AnalysisResult(
        record_id="r",
        model_version="m1",
        quality=QualityReport(ok=False, problems=("V2 lead off", "baseline wander")),
        triage=None,
    )
    res = build_report(refused, record, report_id="rep-3", issued=datetime(2024, 1, 1))
    report = validate_all(res)
    assert report["status"] == "cancelled"
    assert "not analysed: V2 lead off; baseline wander" in report["conclusion"]
    assert res.observations == ()
    assert "result" not in report
    assert resource_json(res.provenance)["target"] == [{"reference": "DiagnosticReport/rep-3"}]


def test_report_references_source_observation_and_patient_reference() -> None:
    rec = observation_to_record(ecg_observation(subject={"reference": "Patient/p9"}), patient=None)
    res = build_report(analysis(True), rec, report_id="r4", issued=NOW)
    assert resource_json(res.diagnostic_report)["subject"] == {"reference": "Patient/p9"}
    entity = resource_json(res.provenance)["entity"][0]
    assert entity == {
        "role": "source",
        "what": {"reference": "Observation/o1", "display": "source ECG"},
    }


def test_report_bundle_is_an_idempotent_transaction(record: EcgRecord) -> None:
    res = build_report(analysis(True), record, report_id="rep-5", issued=NOW)
    bundle = report_bundle(res)
    Bundle.model_validate(bundle)
    assert [e["request"] for e in bundle["entry"]][:2] == [
        {"method": "PUT", "url": "DiagnosticReport/rep-5"},
        {"method": "PUT", "url": "Observation/rep-5-triage"},
    ]
    assert bundle["entry"][-1]["resource"]["resourceType"] == "Provenance"


# --- fuzzing: arbitrary JSON-ish input yields a record or a MappingError -----------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["", "component", "code", "subject", "effectiveDateTime", "identifier", "id"]
            ),
            st.integers(min_value=0, max_value=13),
            st.sampled_from(
                ["valueSampledData", "code", "origin", "period", "data", "factor", "interval"]
            ),
            json_values,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_observation(edits: list[tuple[str, int, str, Any]]) -> None:
    obs = ecg_observation()
    for top, index, key, value in edits:
        if top == "":
            obs[key] = value
        elif (
            top == "component"
            and isinstance(obs.get("component"), list)
            and index < len(obs["component"])
        ):
            comp = obs["component"][index]
            target = (
                comp.get("valueSampledData")
                if key in ("origin", "period", "data", "factor", "interval")
                else comp
            )
            if isinstance(target, dict):  # an earlier edit may have replaced it
                target[key] = value
        else:
            obs[top] = value
    with contextlib.suppress(MappingError):
        observation_to_record(obs)
    with contextlib.suppress(MappingError):
        bundle_to_records(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": obs}, {"resource": value}, value],
            }
        )
