"""AnalysisResult + EcgRecord (or the FHIR R4 report built from them) -> HL7 v2.5.1 ORU^R01
result message, for EHRs that only speak v2 (the FHIR DiagnosticReport and this message say
the same thing).

Layout (ORU_R01: MSH, PID, OBR, OBX..., all in one ORDER_OBSERVATION):

* MSH-9 ``ORU^R01^ORU_R01``, MSH-12 ``2.5.1``; PID-3 the record's patient identifier, PID-8
  sex; OBR-2/3 the record's placer / filler ids, OBR-4 ``11524-6^EKG study^LN``, OBR-7
  acquisition time, OBR-22 result time, OBR-25 the result status (HL7 table 0123): ``P``
  preliminary (triage done, explanations to follow), ``F`` final, ``X`` no result (the
  quality gate refused the ECG; FHIR ``cancelled``). OBX-11 is ``P`` or ``F`` alike.
* OBX 1, CWE, ``TRIAGE^ECG AI triage^99ECGB``: ``POS`` "Acute MI/injury suspected:
  urgent angiography to be considered", ``NEG`` "No acute MI/injury pattern", or ``NA``
  "Not analysed" (quality gate); OBX-8 abnormal flag ``A`` when positive.
* OBX, NM, ``MI-PROB`` (probability 0-1, unit ``1``), OBX-7 the threshold as the
  reference range ``<threshold``.
* OBX per territory, NM, ``TERR-PROB`` with OBX-4 sub-id = vessel (``LAD``/``RCA``/``LCx``),
  OBX-8 ``A`` when positive.
* OBX, TX, ``CONCLUSION``: the conclusion text (quality problems when not analysed).
* OBX, TX, ``EXPLANATION`` (only when explained): the main drivers and the flipping edit
  (`mappers.explanation_text.explanation_summary`).
* OBX, TX, ``NOTICE``: "decision support, not a diagnosis".

Two entry points build the same segments: `build_result_oru` from the domain objects, and
`report_result_oru` from the `ReportResources` a report writer gets (the FHIR report holds
neither the placer order number nor the patient's sex: OBR-2 and PID-8 are then empty).
Codes are local (coding system ``99ECGB``, HL7 table 0396 local-code convention).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from inference.record import EcgRecord, Sex
from inference.result import AnalysisResult
from mappers.explanation_text import explanation_summary
from mappers.fhir_extensions import EXPLANATION_URL, sub_values
from mappers.fhir_json import resource_json
from mappers.fhir_report import ReportResources
from mappers.hl7v2_oru_out import oru_msh
from mappers.hl7v2_wire import escape, format_ts

LOCAL = "99ECGB"
NOTICE = "Decision support, not a diagnosis: read with the patient and the full ECG."
_SEX = {Sex.MALE: "M", Sex.FEMALE: "F", Sex.UNKNOWN: "U"}

#: OBR-25 result status (HL7 table 0123).
ResultStatus = Literal["P", "F", "X"]
_FHIR_STATUS: dict[str, ResultStatus] = {"preliminary": "P", "final": "F", "cancelled": "X"}
_VESSELS = {"lad": "LAD", "rca": "RCA", "lcx": "LCx"}
_NOT_ANALYSED = re.compile(r"not analysed: (?P<problems>.*?)\. ")


@dataclass(frozen=True, slots=True)
class Probability:
    """One probability the message reports (0-1), with its decision threshold."""

    probability: float
    threshold: float
    positive: bool
    #: Territory findings: the vessel (``LAD``/``RCA``/``LCx``); "" for the triage.
    vessel: str = ""
    territory: str = ""


@dataclass(frozen=True, slots=True)
class ResultContent:
    """What one result message says, whichever side it was read from."""

    status: ResultStatus
    model_version: str
    filler: str
    placer: str
    patient_id: str
    sex: str
    acquired_at: datetime | None
    result_at: datetime
    triage: Probability | None
    territories: tuple[Probability, ...]
    quality_problems: tuple[str, ...]
    explanation: str | None


def result_status(report_status: str) -> ResultStatus:
    """FHIR DiagnosticReport.status -> OBR-25 (``preliminary`` P, ``final`` F, ``cancelled``
    X); ValueError for a status a result message cannot carry."""
    try:
        return _FHIR_STATUS[report_status]
    except KeyError:
        raise ValueError(f"DiagnosticReport.status {report_status!r} has no OBR-25") from None


def result_control_id(report_id: str, status: ResultStatus) -> str:
    """MSH-10 of the result message of one write (20 characters, the 2.5.1 length): distinct
    for the preliminary and the final write of a report, the same when one write is retried,
    so a receiver's duplicate check sees a resend as the message it already has."""
    digest = hashlib.sha256(f"{report_id}\x00{status}".encode()).hexdigest()
    return f"EB{digest[:17]}{status}"


def triage_code(result: AnalysisResult) -> tuple[str, str]:
    """The coded triage result: ``(code, text)``."""
    return _triage_code(
        None
        if result.triage is None
        else Probability(result.triage.probability, result.triage.threshold, result.triage.positive)
    )


def _triage_code(triage: Probability | None) -> tuple[str, str]:
    if triage is None:
        return "NA", "Not analysed"
    if triage.positive:
        return "POS", "Acute MI/injury suspected: urgent angiography to be considered"
    return "NEG", "No acute MI/injury pattern"


def conclusion_text(result: AnalysisResult) -> str:
    """The conclusion line the message carries."""
    return _conclusion(content_of(result, None, now=result.analysed_at or datetime.min))


def _conclusion(c: ResultContent) -> str:
    if c.triage is None:
        problems = "; ".join(c.quality_problems) or "signal quality"
        return f"Not analysed: {problems}."
    _code, text = _triage_code(c.triage)
    parts = [f"{text} (p={c.triage.probability:.2f}, threshold {c.triage.threshold:.2f})."]
    positive = [
        f"{t.territory} ({t.vessel}) p={t.probability:.2f}" for t in c.territories if t.positive
    ]
    if positive:
        parts.append("Territory: " + ", ".join(positive) + ".")
    return " ".join(parts)


def content_of(
    result: AnalysisResult, record: EcgRecord | None, *, now: datetime, status: ResultStatus = "F"
) -> ResultContent:
    """The message content from the domain objects (`record` None: no ids)."""
    patient = record.patient if record is not None else None
    return ResultContent(
        status=status if result.analysed else "X",
        model_version=result.model_version,
        filler=record.record_id if record is not None else result.record_id,
        placer=(record.identifier("placer") or "") if record is not None else "",
        patient_id=(patient.value or patient.reference or "") if patient is not None else "",
        sex=_SEX[record.demographics.sex] if record is not None else "",
        acquired_at=record.acquired_at if record is not None else None,
        result_at=now,
        triage=None
        if result.triage is None
        else Probability(
            result.triage.probability, result.triage.threshold, result.triage.positive
        ),
        territories=tuple(
            Probability(t.probability, t.threshold, t.positive, t.vessel, t.territory)
            for t in result.territories
        ),
        quality_problems=tuple(result.quality.problems),
        explanation=explanation_summary(result.explanation),
    )


def _fraction(obs: Mapping[str, Any]) -> Probability:
    value = float(obs["valueQuantity"]["value"]) / 100.0
    high = ((obs.get("referenceRange") or [{}])[0].get("high") or {}).get("value")
    codes = [c.get("code") for i in obs.get("interpretation") or () for c in i.get("coding", ())]
    return Probability(value, float(high) / 100.0 if high is not None else 0.0, "H" in codes)


def _explanation_json(ext: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of the ``ecg-explanation`` extension `explanation_summary` reads, as the
    explanation JSON it was built from."""

    def one(items: list[Any], url: str) -> Any:
        return next((v for v in sub_values({"extension": items}, url)), None)

    out: dict[str, Any] = {"reason": one(ext["extension"], "status")}
    out["attributions"] = [
        {"lead": one(a, "lead"), "segment": one(a, "segment"), "share": one(a, "share")}
        for a in sub_values(ext, "attribution")
    ]
    cf = one(ext["extension"], "counterfactual")
    if cf is not None:
        out["counterfactual"] = {
            "valid": one(cf, "valid"),
            "original_probability": one(cf, "originalProbability"),
            "new_probability": one(cf, "newProbability"),
            "edits": [
                {
                    "lead": one(e, "lead"),
                    "segment": one(e, "segment"),
                    "delta_mv": one(e, "delta")["value"],
                    **({"wave": one(e, "wave")} if one(e, "wave") else {}),
                }
                for e in sub_values({"extension": cf}, "edit")
            ],
        }
    return out


def content_of_report(resources: ReportResources) -> ResultContent:
    """The message content from the FHIR report resources (what a report writer gets)."""
    report = resource_json(resources.diagnostic_report)
    observations = {str(o.id): resource_json(o) for o in resources.observations}
    prov = resource_json(resources.provenance)
    rid = str(report["id"])
    triage_obs = observations.get(f"{rid}-triage")
    territories = []
    for oid, obs in observations.items():
        if oid.startswith(f"{rid}-territory-"):
            vessel = oid.removeprefix(f"{rid}-territory-")
            code = str(obs["code"]["coding"][0]["code"])
            p = _fraction(obs)
            territories.append(
                Probability(
                    p.probability,
                    p.threshold,
                    p.positive,
                    _VESSELS.get(vessel, vessel.upper()),
                    code.removeprefix("culprit-territory-"),
                )
            )
    subject = report.get("subject") or {}
    source: dict[str, Any] = next(
        (e["what"] for e in prov.get("entity", ()) if e.get("role") == "source"), {}
    )
    acquired = report.get("effectiveDateTime")
    model = prov["agent"][0]["who"].get("identifier", {}).get("value", "")
    explanation = next(
        (e for e in report.get("extension", ()) if e.get("url") == EXPLANATION_URL), None
    )
    problems: tuple[str, ...] = ()
    if triage_obs is None:
        found = _NOT_ANALYSED.search(str(report.get("conclusion", "")))
        problems = tuple(found.group("problems").split("; ")) if found else ()
    return ResultContent(
        status=result_status(str(report["status"])),
        model_version=str(model),
        filler=str((source.get("identifier") or {}).get("value") or source.get("reference", "")),
        placer="",
        patient_id=str(
            (subject.get("identifier") or {}).get("value") or subject.get("reference", "")
        ),
        sex="",
        acquired_at=datetime.fromisoformat(str(acquired)) if acquired else None,
        result_at=datetime.fromisoformat(str(report["issued"])),
        triage=None if triage_obs is None else _fraction(triage_obs),
        territories=tuple(territories),
        quality_problems=problems,
        explanation=None
        if explanation is None
        else explanation_summary(_explanation_json(explanation)),
    )


def build_result_oru(
    result: AnalysisResult,
    record: EcgRecord,
    *,
    control_id: str,
    now: datetime,
    status: ResultStatus = "F",
    sending_application: str = "ECGBRIDGE",
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
) -> bytes:
    """The result ORU^R01 (see the module docstring) of `result`, ``status`` P while
    explanations are to follow (X regardless when not analysed). Segments joined by CR."""
    return render_result_oru(
        content_of(result, record, now=now, status=status),
        control_id=control_id,
        now=now,
        sending_application=sending_application,
        sending_facility=sending_facility,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
    )


def report_result_oru(
    resources: ReportResources,
    *,
    control_id: str,
    now: datetime,
    sending_application: str = "ECGBRIDGE",
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
) -> bytes:
    """The result ORU^R01 of a FHIR report (status from DiagnosticReport.status)."""
    return render_result_oru(
        content_of_report(resources),
        control_id=control_id,
        now=now,
        sending_application=sending_application,
        sending_facility=sending_facility,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
    )


def render_result_oru(
    c: ResultContent,
    *,
    control_id: str,
    now: datetime,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
) -> bytes:
    """The segments of `c`, joined by CR."""
    segs = [
        oru_msh(
            control_id=control_id,
            now=now,
            sending_application=sending_application,
            sending_facility=sending_facility,
            receiving_application=receiving_application,
            receiving_facility=receiving_facility,
        )
    ]
    # PID-5 is required in 2.5.1; ecgbridge holds no names: the HL7 explicit null ""
    segs.append("|".join(["PID", "1", "", escape(c.patient_id), "", '""', "", "", c.sex]))
    acquired = format_ts(c.acquired_at) if c.acquired_at else ""
    obr = ["OBR", "1", escape(c.placer), escape(c.filler), "11524-6^EKG study^LN", "", ""]
    obr += [acquired] + [""] * 14 + [format_ts(c.result_at), "", "", c.status]
    segs.append("|".join(obr))
    obx: list[list[str]] = []
    code, text = _triage_code(c.triage)
    flag = "A" if code == "POS" else ("N" if code == "NEG" else "")
    obx.append(
        ["CWE", f"TRIAGE^ECG AI triage^{LOCAL}", "", f"{code}^{escape(text)}^{LOCAL}", "", "", flag]
    )
    if c.triage is not None:
        obx.append(
            [
                "NM",
                f"MI-PROB^Probability of acute MI/injury^{LOCAL}",
                "",
                f"{c.triage.probability:.4f}",
                "1^^UCUM",
                f"<{c.triage.threshold:.4f}",
                flag,
            ]
        )
        for t in c.territories:
            obx.append(
                [
                    "NM",
                    f"TERR-PROB^Culprit territory probability^{LOCAL}",
                    escape(t.vessel),
                    f"{t.probability:.4f}",
                    "1^^UCUM",
                    f"<{t.threshold:.4f}",
                    "A" if t.positive else "N",
                ]
            )
    obx.append(["TX", f"CONCLUSION^Conclusion^{LOCAL}", "", escape(_conclusion(c)), "", "", ""])
    if c.explanation:
        obx.append(
            ["TX", f"EXPLANATION^AI explanation^{LOCAL}", "", escape(c.explanation), "", "", ""]
        )
    obx.append(["TX", f"NOTICE^Notice^{LOCAL}", "", escape(NOTICE), "", "", ""])
    obx_status = "P" if c.status == "P" else "F"
    for i, (vtype, ident, sub, value, units, ref, abn) in enumerate(obx, start=1):
        fields = ["OBX", str(i), vtype, ident, sub, value, units, ref, abn, "", "", obx_status]
        fields += ["", "", acquired, "", "", "", f"{escape(c.model_version)}^ecgbridge"]
        segs.append("|".join(fields).rstrip("|"))
    return "\r".join(segs).encode("utf-8")
