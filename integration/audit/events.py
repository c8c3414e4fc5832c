"""Typed audit events: what happened, to whom, by whom, with what outcome.

`AuditEvent` is what callers append. PHI (patient identifier, name, birth date) travels only
in `PatientRef`; the log stores it AES-GCM encrypted plus an HMAC search key, never in clear.
`detail` carries non-PHI facts (model outputs, MSH-10, resource ids, override reasons).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

DetailValue = str | int | float | bool | None


class EventKind(StrEnum):
    """Every kind of event the product audits (issue 9, item 1)."""

    MESSAGE_RECEIVED = "message.received"
    ACK_SENT = "ack.sent"
    ANALYSIS_STARTED = "analysis.started"
    ANALYSIS_FINISHED = "analysis.finished"
    REPORT_WRITTEN = "report.written"
    ALERT_SENT = "alert.sent"
    ALERT_ACKNOWLEDGED = "alert.acknowledged"
    CDS_CARD_SHOWN = "cds.card.shown"
    CDS_FEEDBACK = "cds.feedback"
    AUTH_FAILURE = "auth.failure"
    CONFIG_CHANGED = "config.changed"
    #: A start whose effective settings match the last recorded ones (fingerprint only).
    CONFIG_LOADED = "config.loaded"
    AUDIT_EXPORTED = "audit.exported"
    AUDIT_ARCHIVED = "audit.archived"
    AUDIT_VIEWED = "audit.viewed"
    #: A subgroup's positive rate left its reference band (integration.fairness_monitor).
    FAIRNESS_DRIFT = "fairness.drift"
    #: A written DiagnosticReport was read or searched through ``GET /fhir/DiagnosticReport``.
    REPORT_READ = "report.read"
    #: An HL7 v2 enhanced-mode application ACK sent to the sender (integration.app_ack).
    APP_ACK_SENT = "ack.application.sent"
    #: One the sender asked for, not sent: no endpoint configured for that sender.
    APP_ACK_SKIPPED = "ack.application.skipped"


class Outcome(StrEnum):
    """FHIR AuditEvent.outcome (R4): 0 success, 4 minor, 8 serious, 12 major failure."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


@dataclass(frozen=True, slots=True)
class PatientRef:
    """The patient an event concerns. PHI: encrypted at rest, never logged."""

    identifier: str
    system: str = ""
    name: str | None = None
    birth_date: str | None = None

    def __repr__(self) -> str:  # keep PHI out of tracebacks and logs
        return "PatientRef(<redacted>)"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited action.

    ``ecg_id`` links the events of one ECG (the inbox id) so the review page can show the
    chain from message received to alert acknowledged. ``finding`` is the clinical outcome
    a reviewer searches for (e.g. ``"triage-positive"``); ``outcome`` is whether the action
    itself succeeded.
    """

    kind: EventKind
    actor: str
    outcome: Outcome = Outcome.SUCCESS
    recorded_at: datetime = field(default_factory=_now)
    patient: PatientRef | None = None
    ecg_id: str | None = None
    message_id: str | None = None
    resource: str | None = None
    model_version: str | None = None
    finding: str | None = None
    override: bool = False
    detail: Mapping[str, DetailValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recorded_at.tzinfo is None:
            raise ValueError("recorded_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An entry as read back from the log: the event's fields (PHI still encrypted) and its
    place in the Merkle tree."""

    index: int
    kind: EventKind
    actor: str
    outcome: Outcome
    recorded_at: datetime
    patient_key: str | None
    phi_token: str | None
    ecg_id: str | None
    message_id: str | None
    resource: str | None
    model_version: str | None
    finding: str | None
    override: bool
    detail: Mapping[str, DetailValue]
    leaf_hash: bytes
