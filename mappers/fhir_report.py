"""AnalysisResult -> FHIR R4 (4.0.1) DiagnosticReport + Observations + Provenance (R4B models).

Choices (decision support, not a diagnosis):

* DiagnosticReport: id = `report_id`, identifier ``urn:ecgbridge:report|<report_id>``,
  category v2-0074 ``EC`` (Electrocardiac; ``CG`` in that table is Cytogenetics), code LOINC
  11524-6 "EKG study". Status ``final`` when analysed; ``cancelled`` when the quality gate
  refused the ECG (FHIR: "the report is unavailable because the measurement was not started
  or not completed") - the conclusion then says "not analysed: <problems>".
* conclusionCode: SNOMED CT 164865005 "ECG: myocardial infarction" when triage is positive
  (the finding the model's MI / injury proxy labels stand for). None when negative: the model
  does not assess the whole ECG, so "ECG normal" (164854000) would claim more than it knows.
* One Observation for the triage probability (``<report_id>-triage``) and one per territory
  (``<report_id>-territory-<vessel>``), valueQuantity in UCUM ``%``, interpretation v3 ``H``
  (at or above the decision threshold) or ``N``, the threshold as referenceRange.high.
  Referenced from `DiagnosticReport.result` as ``Observation/<id>``. Models with the issue-5
  heads add, in this order after the territories:
  ``<report_id>-ischemia`` (acute-ischaemia probability, same shape as triage);
  ``<report_id>-rhythm`` (valueCodeableConcept: the most likely rhythm as SNOMED CT, or text
  "undetermined"; one component per rhythm with its probability in %);
  ``<report_id>-stenosis`` (stenosis > 70 %: while no validated site head is loaded,
  *no value* but dataAbsentReason ``not-performed`` and a note saying why - never a number
  without validation; when validated, one component per vessel in %).
* Uncertainty travels with every probability of an ensemble model as components:
  ``probability-sd`` (standard deviation of the members' probabilities, %) and
  ``ensemble-range`` (valueRange: lowest and highest member probability, %); when the members
  disagree about the call a note says so and the conclusion flags it.
* Every AI-made resource carries the security label v3-ObservationValue ``AIAST``
  (HL7 AI Transparency on FHIR). Provenance (profile ``ecgbridge-ai-provenance``) targets the
  report and the observations, with agent type ``author``, who = Reference(Device) of the model
  (`mappers.fhir_device`: deterministic id from the model version, with its identifier
  ``urn:ecgbridge:model|<version>``), entities the source ECG (``source``) and the model card
  (``derivation``, as the AI Transparency IG does in R4). Observation.device references the
  same Device.
* An AuditEvent of the write (`mappers.fhir_report_audit`, IHE BALP) travels with the report.
  The Device and model card themselves are written once per model by the writers
  (`report_bundle(..., model=...)`, `integration.writeback`).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.resource import Resource

from inference.record import EcgRecord
from inference.result import (
    STENOSIS_NOT_ASSESSED,
    AnalysisResult,
    RhythmFinding,
    StenosisAssessment,
    TerritoryFinding,
)
from mappers.explanation_text import explanation_summary, fairness_summary
from mappers.fhir_device import AIAST as AIAST
from mappers.fhir_device import MODEL_SYSTEM as MODEL_SYSTEM
from mappers.fhir_device import (
    ModelResources,
    model_card_id,
    model_reference,
)
from mappers.fhir_extensions import explanation_extension, fairness_extension
from mappers.fhir_json import LOINC, SNOMED, UCUM, R, resource_json, validate_resource
from mappers.fhir_measurements import measurement_observations
from mappers.fhir_report_audit import report_audit_event
from mappers.profiles import AI_OBSERVATION_PROFILE, AI_PROVENANCE_PROFILE, REPORT_PROFILE

REPORT_SYSTEM = "urn:ecgbridge:report"
OBSERVATION_SYSTEM = "urn:ecgbridge:observation"
DISCLAIMER = "Not a diagnosis."

_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
#: SCP rhythm code -> SNOMED CT (the PhysioNet/CinC 2020-2021 ECG mapping).
RHYTHM_SNOMED: dict[str, tuple[str, str]] = {
    "SR": ("426783006", "Sinus rhythm"),
    "AFIB": ("164889003", "Atrial fibrillation"),
    "STACH": ("427084000", "Sinus tachycardia"),
    "SBRAD": ("426177001", "Sinus bradycardia"),
    "SARRH": ("427393009", "Sinus arrhythmia"),
}
_VESSEL_NAMES = {
    "LAD": "Left anterior descending coronary artery",
    "RCA": "Right coronary artery",
    "LCx": "Left circumflex coronary artery",
}


@dataclass(frozen=True)
class ReportResources:
    """The FHIR resources written back for one analysis."""

    diagnostic_report: DiagnosticReport
    observations: tuple[Observation, ...]
    provenance: Provenance
    #: What they were built from, for writers that speak another format (HL7 v2 results):
    #: not written, never serialised.
    result: AnalysisResult | None = None
    record: EcgRecord | None = None
    #: The AuditEvent of this write (IHE BALP), written with the report by the FHIR writers.
    audit_event: AuditEvent | None = None
    #: The model that made them (its Device and model card are written once per model).
    model_version: str = ""
    #: The JSON each model above was validated from, by ``id(model)``, with the model
    #: itself (so an id reused by another object never matches). Writers send it as is
    #: (`json_of`): serialising through fhir.resources costs ~16 ms per report, a third of a
    #: worker's CPU per ECG. A model swapped in later (``dataclasses.replace``) is
    #: serialised. The models are treated as frozen once built: change one and it must be
    #: swapped in, not edited in place.
    validated_json: Mapping[int, tuple[Resource, Mapping[str, Any]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def json_of(self, model: Resource) -> dict[str, Any]:
        """`model` as FHIR JSON (a fresh copy the caller may change)."""
        known = self.validated_json.get(id(model))
        if known is not None and known[0] is model:
            return copy.deepcopy(dict(known[1]))
        return resource_json(model)


def _instant(when: datetime) -> str:
    """FHIR instant / dateTime text, UTC as ``Z``: the form fhir.resources writes, so the
    JSON built here is byte for byte what serialising the validated model gives."""
    text = (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _percent(value: float) -> dict[str, Any]:
    # 4 decimals of a percent (1e-6 of probability): the stored value is the model's own.
    return {"value": round(value * 100.0, 4), "unit": "%", "system": UCUM, "code": "%"}


def _interpretation(positive: bool) -> list[dict[str, Any]]:
    code, display = ("H", "High") if positive else ("N", "Normal")
    return [{"coding": [{"system": _INTERPRETATION, "code": code, "display": display}]}]


def _subject(record: EcgRecord) -> dict[str, Any] | None:
    patient = record.patient
    if patient is None:
        return None
    if patient.reference:
        return {"reference": patient.reference}
    ident = {"value": patient.value}
    if patient.system:
        ident["system"] = patient.system
    return {"identifier": ident}


def _observation(
    obs_id: str,
    *,
    code: str,
    text: str,
    probability: float,
    threshold: float,
    common: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "meta": {"profile": [AI_OBSERVATION_PROFILE], "security": [AIAST]},
        "status": "final",
        "code": {
            "coding": [{"system": OBSERVATION_SYSTEM, "code": code, "display": text}],
            "text": text,
        },
        **common,
        "valueQuantity": _percent(probability),
        "interpretation": _interpretation(probability >= threshold),
        "referenceRange": [{"high": _percent(threshold), "text": "decision threshold"}],
        "note": [{"text": f"AI decision support. {DISCLAIMER}"}],
        **(extra or {}),
    }


def _code(code: str, text: str) -> dict[str, Any]:
    return {"coding": [{"system": OBSERVATION_SYSTEM, "code": code, "display": text}], "text": text}


def _uncertainty(
    sd: float | None, interval: tuple[float, float] | None, threshold: float
) -> dict[str, Any]:
    """Components (and a note) carrying an ensemble's spread; empty without one."""
    components: list[dict[str, Any]] = []
    if sd is not None:
        components.append(
            {
                "code": _code("probability-sd", "Ensemble standard deviation of the probability"),
                "valueQuantity": _percent(sd),
            }
        )
    if interval is not None:
        components.append(
            {
                "code": _code("ensemble-range", "Lowest and highest ensemble member probability"),
                "valueRange": {"low": _percent(interval[0]), "high": _percent(interval[1])},
            }
        )
    out: dict[str, Any] = {"component": components} if components else {}
    if interval is not None and interval[0] < threshold <= interval[1]:
        out["note"] = [
            {"text": f"AI decision support. {DISCLAIMER}"},
            {"text": "Uncertain: the ensemble members disagree about this call."},
        ]
    return out


def _rhythm_observation(
    obs_id: str,
    rhythms: tuple[RhythmFinding, ...],
    top: RhythmFinding | None,
    common: dict[str, Any],
) -> dict[str, Any]:
    if top is not None and top.code in RHYTHM_SNOMED:
        code, display = RHYTHM_SNOMED[top.code]
        value: dict[str, Any] = {
            "coding": [{"system": SNOMED, "code": code, "display": display}],
            "text": top.display,
        }
    else:
        value = {"text": "undetermined (none of the rhythms the model knows is likely)"}
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "meta": {"profile": [AI_OBSERVATION_PROFILE], "security": [AIAST]},
        "status": "final",
        "code": _code("rhythm", "ECG rhythm (AI)"),
        **common,
        "valueCodeableConcept": value,
        "component": [
            {
                "code": _code(f"rhythm-{r.code.lower()}", f"Probability: {r.display}"),
                "valueQuantity": _percent(r.probability),
                "interpretation": _interpretation(r.positive),
                "referenceRange": [{"high": _percent(r.threshold), "text": "decision threshold"}],
            }
            for r in rhythms
        ],
        "note": [{"text": f"AI decision support. {DISCLAIMER}"}],
    }


def _stenosis_observation(
    obs_id: str, stenosis: StenosisAssessment, common: dict[str, Any]
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "meta": {"profile": [AI_OBSERVATION_PROFILE], "security": [AIAST]},
        "status": "final",
        "code": _code("stenosis-over-70", "Coronary stenosis > 70% probability (AI)"),
        **common,
    }
    if not stenosis.assessed:
        obs["dataAbsentReason"] = {
            "coding": [
                {"system": _DATA_ABSENT, "code": "not-performed", "display": "Not Performed"}
            ],
            "text": "not assessed",
        }
        obs["note"] = [{"text": f"Stenosis >70%: {stenosis.reason}. {DISCLAIMER}"}]
        return obs
    obs["component"] = [
        {
            "code": _code(f"stenosis-{f.vessel.lower()}", f"Stenosis > 70%: {f.vessel}"),
            "valueQuantity": _percent(f.probability),
            "interpretation": _interpretation(f.positive),
            "referenceRange": [{"high": _percent(f.threshold), "text": "decision threshold"}],
        }
        for f in stenosis.findings
    ]
    obs["note"] = [{"text": f"AI decision support, {stenosis.reason}. {DISCLAIMER}"}]
    return obs


def _territory_text(t: TerritoryFinding) -> str:
    return f"{t.territory} ({t.vessel}) {t.probability:.0%}"


def conclusion_text(result: AnalysisResult) -> str:
    """The report's conclusion: what the model says, and that it is not a diagnosis."""
    if result.triage is None:
        problems = "; ".join(result.quality.problems) or "signal quality insufficient"
        return f"AI decision support: ECG not analysed: {problems}. {DISCLAIMER}"
    triage = result.triage
    verdict = "LIKELY" if triage.positive else "not detected"
    parts = [
        f"AI decision support: acute MI / injury pattern {verdict} "
        f"(probability {triage.probability:.0%}, threshold {triage.threshold:.0%})."
    ]
    positive = [t for t in result.territories if t.positive]
    if positive:
        parts.append(
            "Suspected culprit territory: " + ", ".join(_territory_text(t) for t in positive) + "."
        )
    if result.uncertain:
        parts.append("Uncertain: the model's ensemble members disagree about this call.")
    if result.ischemia is not None:
        isc = result.ischemia
        parts.append(
            f"Ischaemic ST-T change {'LIKELY' if isc.positive else 'not detected'} "
            f"(probability {isc.probability:.0%})."
        )
    if result.rhythms:
        top = result.rhythm
        parts.append(
            f"Rhythm: {top.display} ({top.probability:.0%})." if top else "Rhythm: undetermined."
        )
    stenosis = result.stenosis or STENOSIS_NOT_ASSESSED
    if stenosis.assessed:
        flagged = [f.vessel for f in stenosis.findings if f.positive]
        parts.append(
            "Stenosis >70% (site-validated model): "
            + (", ".join(flagged) if flagged else "none flagged")
            + "."
        )
    else:
        parts.append("Stenosis >70%: not assessed.")
    fairness = None if result.fairness is None else result.fairness.to_json()
    for sentence in (explanation_summary(result.explanation), fairness_summary(fairness)):
        if sentence:
            parts.append(sentence)
    if not triage.positive:
        parts.append("A negative result does not rule out MI.")
    parts.append(DISCLAIMER)
    return " ".join(parts)


def build_report(
    result: AnalysisResult,
    record: EcgRecord,
    *,
    report_id: str,
    issued: datetime,
    preliminary: bool = False,
    presented_form: Sequence[Mapping[str, Any]] = (),
) -> ReportResources:
    """The DiagnosticReport, its Observations and the Provenance for one analysis.

    Every resource is validated as R4 (`fhir.resources.R4B`); ids derive from `report_id`.
    `preliminary` writes status ``preliminary`` (triage done, explanations to follow: the same
    ids are then written again as ``final``). `presented_form` are Attachment dicts (the
    rendered ECG, `report_attachments`). Delineation measurements in `result.measurements`
    add their Observations (`mappers.fhir_measurements`).
    """
    model_name = f"ecgbridge model {result.model_version}"
    model = model_reference(result.model_version)
    device = {"reference": model["reference"], "display": model_name}
    common: dict[str, Any] = {"issued": _instant(issued)}
    subject = _subject(record)
    if subject:
        common["subject"] = subject
    if record.acquired_at is not None:
        common["effectiveDateTime"] = _instant(record.acquired_at)

    observations: list[dict[str, Any]] = []
    if result.triage is not None:
        observations.append(
            _observation(
                f"{report_id}-triage",
                code="mi-injury-probability",
                text="Acute MI / injury probability",
                probability=result.triage.probability,
                threshold=result.triage.threshold,
                common=common,
                extra={"device": device}
                | _uncertainty(
                    result.triage.uncertainty, result.triage.interval, result.triage.threshold
                ),
            )
        )
        for t in result.territories:
            observations.append(
                _observation(
                    f"{report_id}-territory-{t.vessel.lower()}",
                    code=f"culprit-territory-{t.territory}",
                    text=f"Culprit territory probability: {t.territory} ({t.vessel})",
                    probability=t.probability,
                    threshold=t.threshold,
                    common=common,
                    extra={
                        "bodySite": {"text": _VESSEL_NAMES.get(t.vessel, t.vessel)},
                        "device": device,
                    }
                    | _uncertainty(t.uncertainty, t.interval, t.threshold),
                )
            )
        if result.ischemia is not None:
            isc = result.ischemia
            observations.append(
                _observation(
                    f"{report_id}-ischemia",
                    code="ischemia-probability",
                    text="Ischaemic ST-T change probability",
                    probability=isc.probability,
                    threshold=isc.threshold,
                    common=common,
                    extra={"device": device}
                    | _uncertainty(isc.uncertainty, isc.interval, isc.threshold),
                )
            )
        if result.rhythms:
            observations.append(
                _rhythm_observation(
                    f"{report_id}-rhythm",
                    result.rhythms,
                    result.rhythm,
                    common | {"device": device},
                )
            )
        if result.stenosis is not None:
            observations.append(
                _stenosis_observation(
                    f"{report_id}-stenosis",
                    result.stenosis,
                    common | {"device": device},
                )
            )
    if result.measurements is not None:
        observations.extend(
            measurement_observations(result.measurements, report_id=report_id, common=common)
        )
    obs_refs = [{"reference": f"Observation/{o['id']}"} for o in observations]

    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "meta": {"profile": [REPORT_PROFILE], "security": [AIAST]},
        "identifier": [{"system": REPORT_SYSTEM, "value": report_id}],
        "status": ("preliminary" if preliminary else "final") if result.analysed else "cancelled",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "EC",
                        "display": "Electrocardiac (e.g., EKG, EEC, Holter)",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": "11524-6", "display": "EKG study"}],
            "text": "AI ECG triage (acute MI / occlusion)",
        },
        **common,
        "conclusion": conclusion_text(result),
    }
    if obs_refs:
        report["result"] = obs_refs
    if presented_form:
        report["presentedForm"] = [dict(a) for a in presented_form]
    extensions: list[dict[str, Any]] = []
    if result.fairness is not None:
        extensions.append(fairness_extension(result.fairness.to_json()))
    if result.explanation is not None:
        extensions.append(
            explanation_extension(result.explanation, model_version=result.model_version)
        )
    if extensions:
        report["extension"] = extensions
    if result.triage is not None and result.triage.positive:
        report["conclusionCode"] = [
            {
                "coding": [
                    {"system": SNOMED, "code": "164865005", "display": "ECG: myocardial infarction"}
                ],
                "text": "Acute MI / injury pattern (AI decision support)",
            }
        ]

    source: dict[str, Any] = {"display": "source ECG"}
    source_obs = record.identifier("observation")
    if source_obs:
        source["reference"] = source_obs
    else:
        source["identifier"] = {"value": record.record_id}
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": f"{report_id}-provenance",
        "meta": {"profile": [AI_PROVENANCE_PROFILE]},
        "target": [{"reference": f"DiagnosticReport/{report_id}"}, *obs_refs],
        "recorded": _instant(issued),
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                    "display": "create",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/"
                            "provenance-participant-type",
                            "code": "author",
                            "display": "Author",
                        }
                    ]
                },
                "who": model,
            }
        ],
        "entity": [
            {"role": "source", "what": source},
            {
                "role": "derivation",
                "what": {
                    "reference": f"DocumentReference/{model_card_id(result.model_version)}",
                    "display": "model card",
                },
            },
        ],
    }
    if result.analysed_at is not None:
        provenance["occurredDateTime"] = _instant(result.analysed_at)

    validated: dict[int, tuple[Resource, Mapping[str, Any]]] = {}

    def checked(model: type[R], data: dict[str, Any], path: str) -> R:
        out = validate_resource(model, data, path=path)
        validated[id(out)] = (out, data)
        return out

    return ReportResources(
        diagnostic_report=checked(DiagnosticReport, report, "DiagnosticReport"),
        observations=tuple(checked(Observation, o, "Observation") for o in observations),
        provenance=checked(Provenance, provenance, "Provenance"),
        validated_json=validated,
        result=result,
        record=record,
        audit_event=report_audit_event(
            report_id=report_id,
            status=str(report["status"]),
            model_version=result.model_version,
            recorded=_instant(issued),
            subject=subject,
        ),
        model_version=result.model_version,
    )


def report_bundle(
    resources: ReportResources,
    *,
    bundle_type: str = "transaction",
    model: ModelResources | None = None,
) -> dict[str, Any]:
    """The report resources as one Bundle JSON; in a transaction each entry is an idempotent
    ``PUT <type>/<id>`` so a retried write-back does not duplicate. Order: the `model`'s
    model card and Device (when given), the report, its Observations, the AuditEvent, the
    Provenance."""
    entries = []
    first = () if model is None else (model.model_card, model.device)
    audit = () if resources.audit_event is None else (resources.audit_event,)
    for res in (
        *first,
        resources.diagnostic_report,
        *resources.observations,
        *audit,
        resources.provenance,
    ):
        data = resources.json_of(res)
        entry: dict[str, Any] = {"resource": data}
        if bundle_type in ("transaction", "batch"):
            entry["request"] = {"method": "PUT", "url": f"{data['resourceType']}/{data['id']}"}
        entries.append(entry)
    # Each resource was validated when built; the envelope is checked without its entries'
    # resources (validating them again and re-serialising cost more than the write).
    envelope = {
        **{"resourceType": "Bundle", "type": bundle_type},
        "entry": [{k: v for k, v in e.items() if k != "resource"} for e in entries],
    }
    validate_resource(Bundle, envelope, path="Bundle")
    return {"resourceType": "Bundle", "type": bundle_type, "entry": entries}


def report_attachments(
    *, png: bytes | None = None, pdf: bytes | None = None, created: datetime, title: str
) -> list[dict[str, Any]]:
    """`DiagnosticReport.presentedForm` Attachments for the rendered ECG (base64 inline)."""
    out: list[dict[str, Any]] = []
    for content_type, data, suffix in (("image/png", png, "PNG"), ("application/pdf", pdf, "PDF")):
        if data:
            out.append(
                {
                    "contentType": content_type,
                    "data": base64.b64encode(data).decode("ascii"),
                    "size": len(data),
                    "title": f"{title} ({suffix})",
                    "creation": _instant(created),
                }
            )
    return out
