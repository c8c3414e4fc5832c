"""Delineation measurements -> FHIR R4 Observations (the vocabulary of the explanations).

Input: the ``measurements`` JSON of an analysis (`inference.delineation.Delineation.to_json`:
``per_lead`` {lead: {st_mv, t_mv, qrs_ms}}, ``hr_bpm``, ``pr_ms``, ``qrs_ms``, ``qt_ms``,
``qtc_ms``). Output: Observation dicts, ids ``<report_id>-<name>``, all ``final``, category
``procedure``, the ECG's subject / effective time / issued from `common`. Values that were not
measurable (None) are left out; a whole Observation without any value is not written.

Codes, standard where one exists:

* global intervals (LOINC, the EKG panel's codes): heart rate 8867-4 (``/min``), P-R interval
  8625-6, QRS duration 8633-0, Q-T interval 8634-8, Q-T interval corrected 8636-3 (Bazett,
  said in ``method``), all in ``ms``;
* ST level at J+60 ms per lead: ISO/IEEE 11073 MDC ``MDC_ECG_AMPL_ST_<lead>`` = 131840 + the
  MDC lead index (I = 131841, aVF = 131904), one component per lead, in ``mV``;
* T-wave amplitude and QRS duration per lead: no standard code naming both the measurement
  and the lead was verified, so project codes (``urn:ecgbridge:observation``
  ``t-amplitude-<lead>``, ``qrs-duration-<lead>``), one component per lead.

These are signal measurements by a deterministic algorithm (`inference.delineation`), not AI
outputs, so they carry no AIAST label; the report's Provenance covers them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mappers.fhir_json import LOINC, UCUM
from mappers.leads import MDC_LEAD_INDEX as _LEAD_INDEX

MDC_SYSTEM = "urn:iso:std:iso:11073:10101"
OBSERVATION_SYSTEM = "urn:ecgbridge:observation"
#: Base of MDC_ECG_AMPL_ST_<lead> (ST amplitude); lead codes are base + MDC lead index.
MDC_ECG_AMPL_ST = 131840

_CATEGORY = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "procedure",
                "display": "Procedure",
            }
        ]
    }
]

#: key in the measurements JSON -> (LOINC code, display, UCUM unit, id suffix).
GLOBAL_CODES: dict[str, tuple[str, str, str, str]] = {
    "hr_bpm": ("8867-4", "Heart rate", "/min", "hr"),
    "pr_ms": ("8625-6", "P-R interval", "ms", "pr"),
    "qrs_ms": ("8633-0", "QRS duration", "ms", "qrs"),
    "qt_ms": ("8634-8", "Q-T interval", "ms", "qt"),
    "qtc_ms": ("8636-3", "Q-T interval corrected", "ms", "qtc"),
}


def st_code(lead: str) -> int:
    return MDC_ECG_AMPL_ST + _LEAD_INDEX[lead]


def _quantity(value: float, unit: str, nd: int) -> dict[str, Any]:
    return {"value": round(float(value), nd), "unit": unit, "system": UCUM, "code": unit}


def _base(
    obs_id: str, coding: dict[str, Any], text: str, common: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": _CATEGORY,
        "code": {"coding": [coding], "text": text},
        **common,
    }


def measurement_observations(
    measurements: Mapping[str, Any], *, report_id: str, common: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The Observations for one ECG's measurements (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for key, (code, display, unit, suffix) in GLOBAL_CODES.items():
        value = measurements.get(key)
        if value is None:
            continue
        obs = _base(
            f"{report_id}-{suffix}",
            {"system": LOINC, "code": code, "display": display},
            display,
            common,
        )
        obs["valueQuantity"] = _quantity(value, unit, 1)
        if key == "qtc_ms":
            obs["method"] = {"text": "Bazett: QT / sqrt(RR), median beat"}
        out.append(obs)
    per_lead: Mapping[str, Mapping[str, Any]] = measurements.get("per_lead") or {}
    leads = [lead for lead in per_lead if lead in _LEAD_INDEX]

    def panel(suffix: str, code: str, text: str, key: str, unit: str, nd: int) -> None:
        comps = []
        for lead in leads:
            value = per_lead[lead].get(key)
            if value is None:
                continue
            if key == "st_mv":
                coding = {
                    "system": MDC_SYSTEM,
                    "code": str(st_code(lead)),
                    "display": f"MDC_ECG_AMPL_ST_{lead.upper()}",
                }
            else:
                coding = {
                    "system": OBSERVATION_SYSTEM,
                    "code": f"{code}-{lead}",
                    "display": f"{text}, lead {lead}",
                }
            comps.append(
                {
                    "code": {"coding": [coding], "text": f"{text}, lead {lead}"},
                    "valueQuantity": _quantity(value, unit, nd),
                }
            )
        if comps:
            obs = _base(
                f"{report_id}-{suffix}",
                {"system": OBSERVATION_SYSTEM, "code": code, "display": text},
                text,
                common,
            )
            obs["component"] = comps
            out.append(obs)

    panel("st-levels", "st-level-j60", "ST level at J+60 ms", "st_mv", "mV", 3)
    panel("t-amplitudes", "t-amplitude", "T-wave amplitude", "t_mv", "mV", 3)
    panel("qrs-by-lead", "qrs-duration", "QRS duration", "qrs_ms", "ms", 1)
    return out
