"""AnalysisResult + EcgRecord -> HL7 v2.5.1 ORU^R01 result message, for EHRs that only
speak v2 (the FHIR DiagnosticReport and this message are built from the same result).

Layout (ORU_R01: MSH, PID, OBR, OBX..., all in one ORDER_OBSERVATION):

* MSH-9 ``ORU^R01^ORU_R01``, MSH-12 ``2.5.1``; PID-3 the record's patient identifier, PID-8
  sex; OBR-2/3 the record's placer / filler ids, OBR-4 ``11524-6^EKG study^LN``, OBR-7
  acquisition time, OBR-22 result time, OBR-25 ``F``.
* OBX 1, CWE, ``TRIAGE^ECG AI triage^99ECGB``: ``POS`` "Acute MI/injury suspected:
  urgent angiography to be considered", ``NEG`` "No acute MI/injury pattern", or ``NA``
  "Not analysed" (quality gate); OBX-8 abnormal flag ``A`` when positive.
* OBX, NM, ``MI-PROB`` (probability 0-1, unit ``1``), OBX-7 the threshold as the
  reference range ``<threshold``.
* OBX per territory, NM, ``TERR-PROB`` with OBX-4 sub-id = vessel (``LAD``/``RCA``/``LCx``),
  OBX-8 ``A`` when positive.
* OBX, TX, ``CONCLUSION``: the conclusion text (quality problems when not analysed), and
  the "decision support, not a diagnosis" notice.

Codes are local (coding system ``99ECGB``, HL7 table 0396 local-code convention).
"""

from __future__ import annotations

from datetime import datetime

from inference.record import EcgRecord, Sex
from inference.result import AnalysisResult
from mappers.hl7v2_oru_out import oru_msh
from mappers.hl7v2_wire import escape, format_ts

LOCAL = "99ECGB"
NOTICE = "Decision support, not a diagnosis: read with the patient and the full ECG."
_SEX = {Sex.MALE: "M", Sex.FEMALE: "F", Sex.UNKNOWN: "U"}


def triage_code(result: AnalysisResult) -> tuple[str, str]:
    """The coded triage result: ``(code, text)``."""
    if result.triage is None:
        return "NA", "Not analysed"
    if result.triage.positive:
        return "POS", "Acute MI/injury suspected: urgent angiography to be considered"
    return "NEG", "No acute MI/injury pattern"


def conclusion_text(result: AnalysisResult) -> str:
    """The conclusion line the message (and report) carries."""
    if result.triage is None:
        problems = "; ".join(result.quality.problems) or "signal quality"
        return f"Not analysed: {problems}."
    _code, text = triage_code(result)
    parts = [
        f"{text} (p={result.triage.probability:.2f}, threshold {result.triage.threshold:.2f})."
    ]
    positive = [
        f"{t.territory} ({t.vessel}) p={t.probability:.2f}"
        for t in result.territories
        if t.positive
    ]
    if positive:
        parts.append("Territory: " + ", ".join(positive) + ".")
    return " ".join(parts)


def build_result_oru(
    result: AnalysisResult,
    record: EcgRecord,
    *,
    control_id: str,
    now: datetime,
    sending_application: str = "ECGBRIDGE",
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
) -> bytes:
    """The result ORU^R01 (see the module docstring). Segments joined by CR."""
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
    pid3 = ""
    if record.patient is not None:
        pid3 = escape(record.patient.value or record.patient.reference or "")
    # PID-5 is required in 2.5.1; ecgbridge holds no names: the HL7 explicit null ""
    segs.append("|".join(["PID", "1", "", pid3, "", '""', "", "", _SEX[record.demographics.sex]]))
    acquired = format_ts(record.acquired_at) if record.acquired_at else ""
    obr = ["OBR", "1", escape(record.identifier("placer") or ""), escape(record.record_id)]
    obr += ["11524-6^EKG study^LN", "", "", acquired] + [""] * 14 + [format_ts(now), "", "", "F"]
    segs.append("|".join(obr))
    obx: list[list[str]] = []
    code, text = triage_code(result)
    flag = "A" if code == "POS" else ("N" if code == "NEG" else "")
    obx.append(
        ["CWE", f"TRIAGE^ECG AI triage^{LOCAL}", "", f"{code}^{escape(text)}^{LOCAL}", "", "", flag]
    )
    if result.triage is not None:
        obx.append(
            [
                "NM",
                f"MI-PROB^Probability of acute MI/injury^{LOCAL}",
                "",
                f"{result.triage.probability:.4f}",
                "1^^UCUM",
                f"<{result.triage.threshold:.4f}",
                flag,
            ]
        )
        for t in result.territories:
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
    obx.append(
        ["TX", f"CONCLUSION^Conclusion^{LOCAL}", "", escape(conclusion_text(result)), "", "", ""]
    )
    obx.append(["TX", f"NOTICE^Notice^{LOCAL}", "", escape(NOTICE), "", "", ""])
    for i, (vtype, ident, sub, value, units, ref, abn) in enumerate(obx, start=1):
        fields = ["OBX", str(i), vtype, ident, sub, value, units, ref, abn, "", "", "F"]
        fields += ["", "", acquired, "", "", "", f"{escape(result.model_version)}^ecgbridge"]
        segs.append("|".join(fields).rstrip("|"))
    return "\r".join(segs).encode("utf-8")
