"""Ingest: every door (MLLP, HTTP, files) validates, commits to the one inbox, then queues.

The answer (ACK, 202) is built only after the inbox commit. Validation happens before the
commit, so nothing half-written is ever stored: a message is either refused with a clear
error or stored whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import Span

from inference.record import EcgRecord
from integration import auditing, failpoints
from integration.audit import AuditError, AuditEvent, Outcome
from integration.auditing import Auditor
from integration.errors import DuplicateConflictError, InboxError
from integration.inbox import Accepted, ContentType, Inbox, InboxItem
from integration.logging_setup import log_context
from integration.metrics import Metrics
from integration.mllp_client import ack_code
from integration.tracing import root_span
from mappers.errors import FhirResourceError, MappingError
from mappers.fhir_attachment import waveform_entries
from mappers.fhir_r4 import bundle_to_records, observation_to_record
from mappers.hl7v2 import Msh, build_ack, fallback_msh, parse_msh, parse_oru_r01
from mappers.hl7v2_priority import Priority, order_priority

log = logging.getLogger(__name__)

Enqueue = Callable[[str, int], None]

#: Celery priority, 0 highest .. 9 lowest (Redis transport): a STAT ECG from the emergency
#: department overtakes a backlog of routine ones.
PRIORITY = {Priority.STAT: 0, Priority.ASAP: 2, Priority.ROUTINE: 5}
ROUTINE_PRIORITY = PRIORITY[Priority.ROUTINE]


class _DuplicateError(MappingError):
    """Same sender + MSH-10 with different content (HL7 table 0357 code 205)."""

    hl7_code = 205


class _StorageError(MappingError):
    """The inbox could not commit (HL7 table 0357 code 207, application internal error)."""

    hl7_code = 207


ENHANCED_MODES = frozenset({"AL", "NE", "ER", "SU"})
_COMMIT_CODE = {"AA": "CA", "AE": "CE", "AR": "CR"}


def ack_code_for(msh: Msh, code: str) -> str:
    """The original-mode code (AA/AE/AR), or its commit-ACK twin in enhanced mode."""
    if msh.accept_ack_type.upper() in ENHANCED_MODES:
        return _COMMIT_CODE.get(code, code)
    return code


def ack_wanted(msh: Msh, code: str) -> bool:
    """Whether MSH-15 (accept acknowledgment type, HL7 table 0155) asks for this ACK."""
    mode = msh.accept_ack_type.upper()
    if mode == "NE":
        return False
    if mode == "ER":
        return code != "CA"
    if mode == "SU":
        return code == "CA"
    return True


def hl7_idempotency_key(msh: Msh) -> str:
    return f"hl7:{msh.sending_facility}|{msh.control_id}"


def fhir_idempotency_key(record: EcgRecord, payload: bytes) -> str:
    ident = record.identifier("observation")
    if not ident:
        return "fhir-sha256:" + hashlib.sha256(payload).hexdigest()
    return f"fhir:{ident}|{record.identifier('version') or ''}"


def decode_item(item: InboxItem) -> EcgRecord:
    """Re-read the stored wire message of an inbox item as an ECG record."""
    if item.content_type is ContentType.HL7V2:
        return parse_oru_r01(item.payload)[1]
    return _fhir_records(json.loads(item.payload))[0][1]


def _fhir_records(obj: Any) -> list[tuple[int, EcgRecord]]:
    if not isinstance(obj, dict):
        raise FhirResourceError("the body is not a FHIR resource (JSON object)")
    kind = obj.get("resourceType")
    if kind == "Bundle":
        return bundle_to_records(obj)
    if kind == "Observation":
        return [(0, observation_to_record(obj))]
    raise FhirResourceError(
        f"resourceType {kind!r} is not accepted here: send an Observation or a Bundle",
        location="resourceType",
    )


@dataclass(frozen=True, slots=True)
class FhirAccepted:
    """One ECG Observation taken in from a FHIR request."""

    entry_index: int
    accepted: Accepted


class IngestService:
    """Validate, commit, queue. Shared by the MLLP listener, the HTTP API and the CLI."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        enqueue: Enqueue,
        audit: Auditor | None = None,
        metrics: Metrics | None = None,
        patient_key: Callable[[str], str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._inbox = inbox
        self._enqueue = enqueue
        self._audit = audit
        self._metrics = metrics
        self._patient_key = patient_key
        self._clock = clock

    # -- HL7 v2 --------------------------------------------------------------------------
    def receive_hl7(self, message: bytes, *, channel: str = "mllp") -> bytes | None:
        """Take one HL7 v2 message and return the ACK to send, or None when the sender's
        enhanced-mode MSH-15 asks for no commit ACK in this case. Never raises.

        Original mode (MSH-15 empty): AA / AE / AR. Enhanced mode (MSH-15 = AL, NE, ER or
        SU): the commit ACK CA / CE / CR, sent as MSH-15 asks (AL always, NE never, ER only
        on error, SU only on success).

        The root span of the ECG's trace (`integration.tracing`): the enqueue carries it to
        the worker. Its attributes are ids only: channel, MSH-10, inbox item id, ACK code.
        """
        with (
            root_span("ecgbridge.receive_hl7", attributes={"ecgbridge.channel": channel}) as span,
            log_context(channel=channel),
        ):
            ack = self._receive_hl7(message, channel=channel, span=span)
            if ack is not None and span.is_recording():
                span.set_attribute("ecgbridge.ack_code", ack_code(ack))
            return ack

    def _receive_hl7(self, message: bytes, *, channel: str, span: Span) -> bytes | None:
        if self._metrics is not None:
            self._metrics.messages_received(channel)
        try:
            msh = parse_msh(message)
        except MappingError as exc:
            log.warning(
                "HL7 message refused before MSH could be read: %s", exc, extra={"event": "refused"}
            )
            self._record(
                auditing.received(
                    actor=channel,
                    message_id="",
                    record=None,
                    outcome=Outcome.MINOR_FAILURE,
                    reason=str(exc),
                )
            )
            return self._answer(fallback_msh(), "AR", channel=channel, error=exc)
        sender = f"{msh.sending_application}|{msh.sending_facility}"
        actor = f"{channel}:{sender}"
        span.set_attribute("ecgbridge.message_id", msh.control_id)
        extra = {"sender": sender}
        try:
            _, record = parse_oru_r01(message)
        except MappingError as exc:
            log.warning(
                "HL7 message %s refused: %s",
                msh.control_id,
                exc,
                extra=extra | {"event": "refused"},
            )
            self._record(
                auditing.received(
                    actor=actor,
                    message_id=msh.control_id,
                    record=None,
                    outcome=Outcome.MINOR_FAILURE,
                    reason=str(exc),
                )
            )
            return self._answer(msh, exc.ack_code, channel=channel, error=exc)
        try:
            # Audited before the commit: if the audit log cannot take it, nothing is stored
            # and the sender gets AE, so no ECG is ever processed unaudited.
            self._record(
                auditing.received(actor=actor, message_id=msh.control_id, record=record),
                strict=True,
            )
        except AuditError:
            return self._answer(
                msh, "AE", channel=channel, error=_StorageError("audit log unavailable")
            )
        ack = self._ack(msh, "AA", text="ECG accepted for analysis") or b""
        try:
            accepted = self._inbox.accept(
                idem_key=hl7_idempotency_key(msh),
                channel=channel,
                content_type=ContentType.HL7V2,
                payload=message,
                record_id=record.record_id,
                priority=PRIORITY[order_priority(message)],
                ack=ack,
                patient_key=self._key_of(record),
            )
        except DuplicateConflictError as exc:
            log.warning(
                "HL7 message %s refused: %s",
                msh.control_id,
                exc,
                extra=extra | {"event": "duplicate_conflict"},
            )
            self._record(
                auditing.received(
                    actor=actor,
                    message_id=msh.control_id,
                    record=record,
                    outcome=Outcome.SERIOUS_FAILURE,
                    reason=str(exc),
                )
            )
            return self._answer(
                msh,
                "AE",
                channel=channel,
                error=_DuplicateError(str(exc), location="MSH[1].10"),
            )
        except InboxError as exc:
            log.error(
                "HL7 message %s not committed: %s",
                msh.control_id,
                exc,
                extra=extra | {"event": "not_committed"},
            )
            return self._answer(
                msh,
                "AE",
                channel=channel,
                error=_StorageError("message not stored; resend later"),
            )
        item = accepted.item
        span.set_attribute("ecgbridge.item_id", item.id)
        extra |= {"item_id": item.id}
        if not accepted.created:
            log.info(
                "HL7 message %s is a replay; stored ACK re-sent",
                msh.control_id,
                extra=extra | {"event": "replay"},
            )
            self._record(
                auditing.ack_sent(
                    actor=actor,
                    message_id=msh.control_id,
                    code=ack_code(item.ack) if item.ack else "none",
                    ecg_id=item.id,
                )
            )
            return item.ack or None
        # the line carries the trace id (JSON logs): the inbox item -> trace look-up
        log.info(
            "HL7 message %s committed as %s",
            msh.control_id,
            item.id,
            extra=extra | {"event": "committed"},
        )
        failpoints.hit("after_inbox_commit")
        self._queue(item)
        if self._metrics is not None:
            self._metrics.acked(ack_code_for(msh, "AA"))
        self._record(
            auditing.ack_sent(
                actor=actor, message_id=msh.control_id, code=ack_code_for(msh, "AA"), ecg_id=item.id
            )
        )
        return ack or None

    def _answer(
        self, msh: Msh, code: str, *, channel: str, error: MappingError | None = None
    ) -> bytes | None:
        """A negative ACK, audited and counted (by its HL7 table 0357 code)."""
        ack = self._ack(msh, code, error=error)
        if self._metrics is not None:
            self._metrics.nacked(str(error.hl7_code) if error is not None else code)
        self._record(
            auditing.ack_sent(
                actor=f"{channel}:{msh.sending_application}|{msh.sending_facility}",
                message_id=msh.control_id,
                code=ack_code_for(msh, code),
                ecg_id=None,
            )
        )
        return ack

    def _key_of(self, record: EcgRecord) -> str | None:
        """The keyed hash (HMAC) of the patient's identifier, for look-ups by patient
        (CDS Hooks) without storing the identifier itself."""
        p = record.patient
        if p is None or self._patient_key is None:
            return None
        return self._patient_key(p.value or p.reference or "")

    def _record(self, event: AuditEvent, *, strict: bool = False) -> None:
        if self._audit is None:
            return
        try:
            self._audit.append(event)
        except AuditError:
            log.exception("audit append failed for %s", event.kind.value)
            if strict:
                raise

    def _ack(
        self, msh: Msh, code: str, *, error: MappingError | None = None, text: str = ""
    ) -> bytes | None:
        code = ack_code_for(msh, code)
        if not ack_wanted(msh, code):
            return None
        return build_ack(
            msh, code, control_id=uuid.uuid4().hex[:20], now=self._clock(), error=error, text=text
        )

    # -- FHIR ----------------------------------------------------------------------------
    def receive_fhir(self, body: bytes, *, channel: str = "http") -> list[FhirAccepted]:
        """Take an ECG Observation or a Bundle of them.

        Raises `MappingError` (-> 422 OperationOutcome) before anything is stored, and
        `InboxError` / `DuplicateConflictError` when the commit fails.
        """
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FhirResourceError(f"the body is not JSON: {exc}") from None
        if self._metrics is not None:
            self._metrics.messages_received(channel)
        records = _fhir_records(obj)
        if not records:
            raise FhirResourceError("the Bundle holds no ECG Observation", location="Bundle.entry")
        out: list[FhirAccepted] = []
        for index, record in records:
            # one trace per ECG, even for several in one Bundle
            attrs: dict[str, str | int] = {
                "ecgbridge.channel": channel,
                "ecgbridge.entry_index": index,
            }
            with root_span("ecgbridge.receive_fhir", attributes=attrs) as span:
                out.append(self._accept_fhir(obj, index, record, channel=channel, span=span))
        return out

    def _accept_fhir(
        self, obj: Any, index: int, record: EcgRecord, *, channel: str, span: Span
    ) -> FhirAccepted:
        payload = _single_payload(obj, index)
        accepted = self._inbox.accept(
            idem_key=fhir_idempotency_key(record, payload),
            channel=channel,
            content_type=ContentType.FHIR,
            payload=payload,
            record_id=record.record_id,
            priority=ROUTINE_PRIORITY,
            patient_key=self._key_of(record),
        )
        span.set_attribute("ecgbridge.item_id", accepted.item.id)
        self._record(
            auditing.received(
                actor=channel,
                message_id=record.record_id,
                record=record,
                ecg_id=accepted.item.id,
                replay=not accepted.created,
            )
        )
        if accepted.created:
            log.info(
                "FHIR ECG %s committed as %s",
                record.record_id,
                accepted.item.id,
                extra={"channel": channel, "item_id": accepted.item.id, "event": "committed"},
            )
            self._queue(accepted.item)
        return FhirAccepted(index, accepted)

    def _queue(self, item: InboxItem) -> None:
        try:
            self._enqueue(item.id, item.priority)
        except Exception:  # the inbox is the system of record; the reconciler re-queues
            log.exception("inbox item %s committed but not queued; reconciler will", item.id)


def _single_payload(obj: dict[str, Any], index: int) -> bytes:
    """The stored form of one ECG: the Observation itself, or for a Bundle entry a
    collection Bundle with that Observation, the Bundle's Patients and the Binary /
    DocumentReference / Media its waveform is in (only those it names, so an ECG stored
    from a Bundle is the same as that ECG sent on its own with them)."""
    if obj.get("resourceType") != "Bundle":
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    entries = obj.get("entry") or []
    observation = (entries[index] or {}).get("resource") or {}
    keep = [entries[index]] + [
        e
        for e in entries
        if isinstance(e, dict) and (e.get("resource") or {}).get("resourceType") == "Patient"
    ]
    keep += [entries[i] for i in waveform_entries(observation, entries) if i != index]
    single = {"resourceType": "Bundle", "type": "collection", "entry": keep}
    return json.dumps(single, sort_keys=True, separators=(",", ":")).encode()


def nak_for(head: bytes, error: MappingError, *, now: datetime | None = None) -> bytes:
    """A negative ACK for bytes that never became a message (oversize or broken frame),
    addressed from their MSH when one can be read."""
    try:
        msh = parse_msh(head)
    except MappingError:
        msh = fallback_msh()
    return build_ack(
        msh,
        ack_code_for(msh, error.ack_code),
        control_id=uuid.uuid4().hex[:20],
        now=now or datetime.now(UTC),
        error=error,
    )
