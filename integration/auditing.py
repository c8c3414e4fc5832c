"""What the product writes to the audit log, in one place: the events of one ECG from
message received to report written. The log itself is `integration.audit`."""

from __future__ import annotations

import logging
from typing import Protocol

from inference.record import EcgRecord, Sex
from inference.result import AnalysisResult
from integration.audit import AuditEvent, EventKind, Outcome, PatientRef

log = logging.getLogger(__name__)


class Auditor(Protocol):
    """The part of `AuditLog` the pipeline uses (an in-memory twin in unit tests)."""

    def append(self, event: AuditEvent) -> int: ...


def patient_of(record: EcgRecord | None) -> PatientRef | None:
    p = None if record is None else record.patient
    if p is None:
        return None
    return PatientRef(identifier=p.value or p.reference or "", system=p.system or "")


def received(
    *,
    actor: str,
    message_id: str,
    record: EcgRecord | None,
    ecg_id: str | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    reason: str = "",
    replay: bool = False,
) -> AuditEvent:
    detail: dict[str, str | bool] = {"replay": replay}
    if reason:
        detail["reason"] = reason[:500]
    return AuditEvent(
        kind=EventKind.MESSAGE_RECEIVED,
        actor=actor,
        outcome=outcome,
        patient=patient_of(record),
        ecg_id=ecg_id,
        message_id=message_id or None,
        detail=detail,
    )


def ack_sent(*, actor: str, message_id: str, code: str, ecg_id: str | None) -> AuditEvent:
    ok = code in ("AA", "CA")
    return AuditEvent(
        kind=EventKind.ACK_SENT,
        actor=actor,
        outcome=Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
        ecg_id=ecg_id,
        message_id=message_id or None,
        detail={"ack_code": code},
    )


def analysis_started(*, ecg_id: str, record: EcgRecord, model_version: str) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.ANALYSIS_STARTED,
        actor="worker",
        patient=patient_of(record),
        ecg_id=ecg_id,
        message_id=record.identifier("msh10"),
        model_version=model_version,
    )


def analysis_finished(*, ecg_id: str, record: EcgRecord, result: AnalysisResult) -> AuditEvent:
    tri = result.triage
    if tri is None:
        finding = "not-analysed"
    else:
        finding = "triage-positive" if tri.positive else "triage-negative"
    detail: dict[str, str | float | bool | None] = {
        "probability": None if tri is None else round(tri.probability, 6),
        "threshold": None if tri is None else tri.threshold,
        "quality": "; ".join(result.quality.problems) or "ok",
    }
    for t in result.territories:
        detail[f"territory_{t.vessel}"] = round(t.probability, 6)
    # Subgroup of the fairness monitor (integration.fairness_monitor). Not identifiers under
    # HIPAA Safe Harbor (45 CFR 164.514(b)(2)): sex is not one of the 18 identifiers, and a
    # three-band age is coarser than the ages Safe Harbor allows; ages over 89, which must be
    # pooled, fall within ">65".
    demo = record.demographics
    detail["sex"] = None if demo.sex is Sex.UNKNOWN else demo.sex.value
    detail["age_band"] = demo.age_band
    if result.fairness is not None:
        detail["fairness_verdict"] = result.fairness.verdict
        detail["adjusted_probability"] = round(result.fairness.adjusted_probability, 6)
    return AuditEvent(
        kind=EventKind.ANALYSIS_FINISHED,
        actor="worker",
        patient=patient_of(record),
        ecg_id=ecg_id,
        message_id=record.identifier("msh10"),
        model_version=result.model_version,
        finding=finding,
        detail=detail,
    )


def report_written(*, ecg_id: str, report_ref: str, model_version: str) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.REPORT_WRITTEN,
        actor="worker",
        ecg_id=ecg_id,
        resource=report_ref,
        model_version=model_version,
    )
