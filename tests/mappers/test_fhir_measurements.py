"""Delineation measurements as FHIR Observations: codes, units, ids, missing values."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation

from inference.delineation import delineate
from integration.samples import load_samples
from mappers.fhir_json import validate_resource
from mappers.fhir_measurements import MDC_SYSTEM, measurement_observations, st_code

COMMON = {"subject": {"reference": "Patient/p1"}, "issued": "2026-11-22T01:00:00+00:00"}


@pytest.fixture(scope="module")
def measurements() -> dict[str, Any]:
    record = load_samples()[0].record
    return dict(delineate(record.signals_mv, record.fs_hz, record.lead_names).to_json())


def _by_id(obs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in obs}


def test_real_measurements_become_valid_observations(measurements: dict[str, Any]) -> None:
    obs = measurement_observations(measurements, report_id="r1", common=COMMON)
    for o in obs:
        validate_resource(Observation, o, path="Observation")
        assert o["subject"] == {"reference": "Patient/p1"}
    by_id = _by_id(obs)
    hr = by_id["r1-hr"]
    assert hr["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "8867-4",
        "display": "Heart rate",
    }
    assert hr["valueQuantity"]["code"] == "/min"
    assert hr["valueQuantity"]["value"] == pytest.approx(measurements["hr_bpm"], abs=0.05)
    assert by_id["r1-qtc"]["code"]["coding"][0]["code"] == "8636-3"
    assert "Bazett" in by_id["r1-qtc"]["method"]["text"]
    st = by_id["r1-st-levels"]
    comps = {c["code"]["coding"][0]["display"]: c for c in st["component"]}
    assert comps["MDC_ECG_AMPL_ST_AVF"]["code"]["coding"][0] == {
        "system": MDC_SYSTEM,
        "code": "131904",
        "display": "MDC_ECG_AMPL_ST_AVF",
    }
    v2 = measurements["per_lead"]["V2"]["st_mv"]
    assert comps["MDC_ECG_AMPL_ST_V2"]["valueQuantity"] == {
        "value": round(v2, 3),
        "unit": "mV",
        "system": "http://unitsofmeasure.org",
        "code": "mV",
    }
    assert len(by_id["r1-t-amplitudes"]["component"]) == 12
    assert "meta" not in hr  # signal measurements, not AI assertions


def test_st_codes_follow_the_mdc_lead_index() -> None:
    assert st_code("I") == 131841
    assert st_code("II") == 131842
    assert st_code("V1") == 131843
    assert st_code("aVL") == 131903


def test_unmeasurable_values_are_left_out() -> None:
    m = {
        "per_lead": {"I": {"st_mv": None, "t_mv": 0.2, "qrs_ms": None}},
        "hr_bpm": None,
        "qtc_ms": 420.0,
    }
    obs = _by_id(measurement_observations(m, report_id="r2", common=COMMON))
    assert set(obs) == {"r2-qtc", "r2-t-amplitudes"}
    assert len(obs["r2-t-amplitudes"]["component"]) == 1
    assert measurement_observations({}, report_id="r3", common=COMMON) == []
