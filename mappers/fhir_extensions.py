"""The project's FHIR extensions: fairness check, explanation, and their canonical URLs.

Every extension is a complex extension (nested ``extension`` entries keyed by a short ``url``)
defined by a StructureDefinition published under `CANONICAL_BASE` (the files in
``mappers/profiles/``, served at ``GET /fhir/StructureDefinition/<id>``). Builders are pure:
JSON-shaped dicts in, JSON-shaped dicts out, no I/O.

``ecg-fairness-check`` (on DiagnosticReport, 0..1)
    ``adjustedProbability`` decimal, ``ownProbability`` decimal, ``maxShift`` decimal,
    ``maxShiftDemographic`` string, ``shiftThreshold`` decimal, ``verdict`` code
    (``stable`` | ``demographic-sensitive``), ``flipsDecision`` boolean, ``method`` string,
    ``byDemographic`` 0..* (``demographic`` string, ``probability`` decimal).
    Probabilities are fractions 0-1 (not %), rounded to 4 decimals.

``ecg-explanation`` (on DiagnosticReport, 0..1)
    ``method`` string, ``modelVersion`` string, ``seconds`` decimal, ``status`` string
    (why parts are missing, if any), ``attribution`` 0..* (``lead`` string, ``segment`` code
    P | QRS | ST | T, ``share`` decimal), ``counterfactual`` 0..1 (``valid`` boolean,
    ``originalProbability`` decimal, ``newProbability`` decimal, ``method`` string, ``edit``
    0..* (``lead`` string, ``segment`` code, ``delta`` Quantity in UCUM ``mV``)), ``rule``
    string, ``ruleFidelity`` decimal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mappers.fhir_json import UCUM

CANONICAL_BASE = "https://ecgbridge.github.io/fhir/StructureDefinition"
FAIRNESS_URL = f"{CANONICAL_BASE}/ecg-fairness-check"
EXPLANATION_URL = f"{CANONICAL_BASE}/ecg-explanation"
#: Every extension URL the project writes (tests check each has a StructureDefinition).
EXTENSION_URLS: tuple[str, ...] = (FAIRNESS_URL, EXPLANATION_URL)
SEGMENT_CODES: tuple[str, ...] = ("P", "QRS", "ST", "T")


def _dec(value: float, nd: int = 4) -> float:
    return round(float(value), nd)


def _sub(url: str, **value: Any) -> dict[str, Any]:
    return {"url": url, **value}


def fairness_extension(fairness: Mapping[str, Any]) -> dict[str, Any]:
    """``ecg-fairness-check`` from `FairnessCheck.to_json()`."""
    parts: list[dict[str, Any]] = [
        _sub("adjustedProbability", valueDecimal=_dec(fairness["adjusted_probability"])),
        _sub("ownProbability", valueDecimal=_dec(fairness["own_probability"])),
        _sub("maxShift", valueDecimal=_dec(fairness["max_shift"])),
        _sub("maxShiftDemographic", valueString=str(fairness["max_shift_demographic"])),
        _sub("shiftThreshold", valueDecimal=_dec(fairness["shift_threshold"])),
        _sub("verdict", valueCode=str(fairness["verdict"])),
        _sub("flipsDecision", valueBoolean=bool(fairness["flips_decision"])),
        _sub("method", valueString=str(fairness["method"])),
    ]
    for demographic, probability in dict(fairness["by_demographic"]).items():
        parts.append(
            _sub(
                "byDemographic",
                extension=[
                    _sub("demographic", valueString=str(demographic)),
                    _sub("probability", valueDecimal=_dec(probability)),
                ],
            )
        )
    return {"url": FAIRNESS_URL, "extension": parts}


def _edit(edit: Mapping[str, Any]) -> dict[str, Any]:
    wave = [_sub("wave", valueCode=str(edit["wave"]))] if edit.get("wave") else []
    return _sub(
        "edit",
        extension=[
            _sub("lead", valueString=str(edit["lead"])),
            _sub("segment", valueCode=str(edit["segment"])),
            *wave,
            _sub(
                "delta",
                valueQuantity={
                    "value": _dec(edit["delta_mv"], 3),
                    "unit": "mV",
                    "system": UCUM,
                    "code": "mV",
                },
            ),
        ],
    )


def explanation_extension(explanation: Mapping[str, Any], *, model_version: str) -> dict[str, Any]:
    """``ecg-explanation`` from the explanation JSON of `ecgbridge analyze --json`."""
    parts: list[dict[str, Any]] = [
        _sub("method", valueString=str(explanation.get("method") or "unspecified")),
        _sub("modelVersion", valueString=model_version),
    ]
    if explanation.get("seconds") is not None:
        parts.append(_sub("seconds", valueDecimal=_dec(explanation["seconds"], 3)))
    if explanation.get("reason"):
        parts.append(_sub("status", valueString=str(explanation["reason"])))
    attributions: Sequence[Mapping[str, Any]] = explanation.get("attributions") or ()
    for a in attributions:
        parts.append(
            _sub(
                "attribution",
                extension=[
                    _sub("lead", valueString=str(a["lead"])),
                    _sub("segment", valueCode=str(a["segment"])),
                    _sub("share", valueDecimal=_dec(a["share"])),
                ],
            )
        )
    cf = explanation.get("counterfactual")
    if cf:
        cf_parts: list[dict[str, Any]] = [_sub("valid", valueBoolean=bool(cf["valid"]))]
        if cf.get("original_probability") is not None:
            cf_parts.append(
                _sub("originalProbability", valueDecimal=_dec(cf["original_probability"]))
            )
        if cf.get("new_probability") is not None:
            cf_parts.append(_sub("newProbability", valueDecimal=_dec(cf["new_probability"])))
        if cf.get("method"):
            cf_parts.append(_sub("method", valueString=str(cf["method"])))
        cf_parts.extend(_edit(e) for e in cf.get("edits") or ())
        parts.append(_sub("counterfactual", extension=cf_parts))
    if explanation.get("rule"):
        parts.append(_sub("rule", valueString=str(explanation["rule"])))
    if explanation.get("rule_fidelity") is not None:
        parts.append(_sub("ruleFidelity", valueDecimal=_dec(explanation["rule_fidelity"])))
    return {"url": EXPLANATION_URL, "extension": parts}


def sub_values(extension: Mapping[str, Any], url: str) -> list[Any]:
    """The ``value[x]`` (or nested extension list) of every sub-extension named `url`: for
    readers and tests."""
    out: list[Any] = []
    for e in extension.get("extension", []):
        if e.get("url") != url:
            continue
        value = next((v for k, v in e.items() if k.startswith("value")), None)
        out.append(value if value is not None else e.get("extension", []))
    return out
