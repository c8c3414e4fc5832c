"""The durable inbox: the system of record for every ECG accepted.

A message is committed here before any ACK or 202 is sent. The idempotency key (sender +
MSH-10 for HL7, identifier + version for FHIR, content hash for files) is unique, so the
same message sent twice is stored once and answered the same way. SQLite by default,
PostgreSQL by URL; both through SQLAlchemy Core.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from integration.errors import DuplicateConflictError, InboxError

log = logging.getLogger(__name__)


class Status(StrEnum):
    ACCEPTED = "accepted"
    PROCESSING = "processing"
    #: A transient error (FHIR server down, database hiccup); a retry is scheduled.
    RETRYING = "retrying"
    #: Triage done and written ("preliminary" report, ED alert sent); the explanations and
    #: the "final" report are queued (`integration.tasks`, the explain queue).
    TRIAGED = "triaged"
    DONE = "done"
    #: Given up after retries or a permanent error; `error` says why. Never re-queued by
    #: the reconciler; an operator re-queues it after fixing the cause.
    DEAD_LETTER = "dead_letter"


class ContentType(StrEnum):
    HL7V2 = "hl7v2"
    FHIR = "fhir"


metadata = MetaData()

inbox_table = Table(
    "ecg_inbox",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("idem_key", String(512), nullable=False, unique=True),
    Column("channel", String(16), nullable=False),
    Column("content_type", String(16), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("payload_sha256", String(64), nullable=False),
    Column("record_id", String(256), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    # HMAC of the patient identifier (never the identifier itself): CDS Hooks look-ups.
    Column("patient_key", String(64), nullable=True, index=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("ack", LargeBinary, nullable=True),
    Column("result_json", Text, nullable=True),
    Column("report_ref", String(256), nullable=True),
    Column("error", Text, nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True, slots=True)
class InboxItem:
    id: str
    idem_key: str
    channel: str
    content_type: ContentType
    payload: bytes
    payload_sha256: str
    record_id: str
    priority: int
    patient_key: str | None
    status: Status
    attempts: int
    ack: bytes | None
    result_json: str | None
    report_ref: str | None
    error: str | None
    received_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Accepted:
    """Outcome of `Inbox.accept`: the item, and whether it was new or a replay."""

    item: InboxItem
    created: bool


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _item(row: Any) -> InboxItem:
    m = row._mapping
    return InboxItem(
        id=m["id"],
        idem_key=m["idem_key"],
        channel=m["channel"],
        content_type=ContentType(m["content_type"]),
        payload=bytes(m["payload"]),
        payload_sha256=m["payload_sha256"],
        record_id=m["record_id"],
        priority=m["priority"],
        patient_key=m["patient_key"],
        status=Status(m["status"]),
        attempts=m["attempts"],
        ack=None if m["ack"] is None else bytes(m["ack"]),
        result_json=m["result_json"],
        report_ref=m["report_ref"],
        error=m["error"],
        received_at=_utc(m["received_at"]),
        updated_at=_utc(m["updated_at"]),
    )


def make_engine(url: str) -> Engine:
    """An engine for the inbox. SQLite gets WAL and a busy timeout so the listeners and
    the worker processes can share one file."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


#: Called inside `Inbox.accept`'s transaction right after a new item's row is inserted, with
#: that connection and the item's id (the audit log writes its entry there: one commit for
#: both, `AuditLog.in_transaction`). Returns a callback that is told, once the transaction
#: has ended, whether it committed.
TransactionHook = Callable[[Connection, str], Callable[[bool], None]]


class PayloadCipher(Protocol):
    """AES-GCM encryption of stored messages (`integration.audit.crypto.PhiCipher`)."""

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> str: ...

    def decrypt(self, token: str, *, aad: bytes) -> bytes: ...


#: Stored payloads that start with this are encrypted (`<marker><token>`); others are
#: plaintext rows from before encryption was configured, still readable.
ENCRYPTED = b"enc1:"


class Inbox:
    """Durable, idempotent store of accepted ECG messages.

    With a `cipher`, each message (it carries PID: identifiers, name, birth date) is stored
    encrypted with AES-GCM, bound to its idempotency key; the duplicate check compares a
    SHA-256 of the plaintext."""

    def __init__(self, engine: Engine, *, cipher: PayloadCipher | None = None) -> None:
        self._engine = engine
        self._cipher = cipher

    def _seal(self, idem_key: str, payload: bytes) -> bytes:
        if self._cipher is None:
            return payload
        return ENCRYPTED + self._cipher.encrypt(payload, aad=idem_key.encode()).encode()

    def _open(self, item: InboxItem) -> InboxItem:
        if not item.payload.startswith(ENCRYPTED):
            return item
        if self._cipher is None:
            raise InboxError(f"inbox item {item.id} is encrypted and no PHI key is configured")
        token = item.payload.removeprefix(ENCRYPTED).decode()
        plain = self._cipher.decrypt(token, aad=item.idem_key.encode())
        return dataclasses.replace(item, payload=plain)

    @classmethod
    def from_url(cls, url: str, *, cipher: PayloadCipher | None = None) -> Inbox:
        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        inbox = cls(make_engine(url), cipher=cipher)
        inbox.create_schema()
        return inbox

    def create_schema(self) -> None:
        try:
            metadata.create_all(self._engine)
            self._add_missing_columns()
        except SQLAlchemyError as exc:
            raise InboxError(
                f"inbox schema could not be created: {exc.__class__.__name__}"
            ) from exc

    def _add_missing_columns(self) -> None:
        """Forward-only schema upgrade for inboxes made by an earlier version: add the
        nullable columns it lacks (no data is rewritten)."""
        have = {c["name"] for c in inspect(self._engine).get_columns(inbox_table.name)}
        with self._engine.begin() as conn:
            for col in inbox_table.columns:
                if col.name not in have and col.nullable:
                    kind = col.type.compile(dialect=self._engine.dialect)
                    conn.execute(
                        text(f'ALTER TABLE {inbox_table.name} ADD COLUMN "{col.name}" {kind}')
                    )
                    log.info("inbox schema: added column %s", col.name)

    def dispose(self) -> None:
        self._engine.dispose()

    def accept(
        self,
        *,
        idem_key: str,
        channel: str,
        content_type: ContentType,
        payload: bytes,
        record_id: str,
        priority: int = 0,
        ack: bytes | None = None,
        patient_key: str | None = None,
        in_transaction: TransactionHook | None = None,
    ) -> Accepted:
        """Commit a message, or return the stored one for a replay of the same key.

        Raises `DuplicateConflictError` when the key is known with a different payload and
        `InboxError` when the database cannot commit. ``in_transaction`` runs inside the
        commit of a new item (not for a replay); what it raises rolls the item back and
        propagates.
        """
        sha = hashlib.sha256(payload).hexdigest()
        now = _now()
        item_id = uuid.uuid4().hex
        row = {
            "id": item_id,
            "idem_key": idem_key,
            "channel": channel,
            "content_type": content_type.value,
            "payload": self._seal(idem_key, payload),
            "payload_sha256": sha,
            "record_id": record_id,
            "priority": priority,
            "patient_key": patient_key,
            "status": Status.ACCEPTED.value,
            "attempts": 0,
            "ack": ack,
            "received_at": now,
            "updated_at": now,
        }
        finish: Callable[[bool], None] | None = None
        committed = False
        try:
            with self._engine.begin() as conn:
                conn.execute(inbox_table.insert().values(**row))
                if in_transaction is not None:
                    finish = in_transaction(conn, item_id)
            committed = True
        except IntegrityError:
            existing = self.find_by_key(idem_key)
            if existing is None:  # pragma: no cover - a unique violation always has a row
                raise InboxError("inbox unique violation without a row") from None
            if existing.payload_sha256 != sha:
                raise DuplicateConflictError(
                    f"message id {idem_key!r} was already received with different content"
                ) from None
            return Accepted(existing, created=False)
        except SQLAlchemyError as exc:
            raise InboxError(f"inbox commit failed: {exc.__class__.__name__}") from exc
        finally:
            if finish is not None:
                finish(committed)
        item = self.get(item_id)
        assert item is not None
        return Accepted(item, created=True)

    def set_ack(self, item_id: str, ack: bytes) -> None:
        """Store the ACK sent for a new message so a replay gets the same bytes."""
        self._update(item_id, ack=ack)

    def get(self, item_id: str) -> InboxItem | None:
        return self._one(select(inbox_table).where(inbox_table.c.id == item_id))

    def stored_ack(self, item_id: str) -> tuple[ContentType, bytes | None] | None:
        """An item's content type and the ACK it was answered with, without reading (or
        decrypting) its payload; None for an unknown item."""
        c = inbox_table.c
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(c.content_type, c.ack).where(c.id == item_id)).first()
        except SQLAlchemyError as exc:
            raise InboxError(f"inbox read failed: {exc.__class__.__name__}") from exc
        if row is None:
            return None
        return ContentType(row.content_type), None if row.ack is None else bytes(row.ack)

    def find_by_key(self, idem_key: str) -> InboxItem | None:
        return self._one(select(inbox_table).where(inbox_table.c.idem_key == idem_key))

    def mark_processing(self, item_id: str) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    update(inbox_table)
                    .where(inbox_table.c.id == item_id)
                    .values(
                        status=Status.PROCESSING.value,
                        attempts=inbox_table.c.attempts + 1,
                        updated_at=_now(),
                    )
                )
        except SQLAlchemyError as exc:
            raise InboxError(f"inbox update failed: {exc.__class__.__name__}") from exc

    def touch(self, item_id: str) -> None:
        """Record that an item was (re-)queued now, so the reconciler waits before the next."""
        self._update(item_id)

    def mark_done(self, item_id: str, *, result_json: str, report_ref: str) -> None:
        self._update(
            item_id,
            status=Status.DONE.value,
            result_json=result_json,
            report_ref=report_ref,
            error=None,
        )

    def mark_triaged(self, item_id: str, *, result_json: str, report_ref: str) -> None:
        """The triage result is written (preliminary report); explanations follow."""
        self._update(
            item_id,
            status=Status.TRIAGED.value,
            result_json=result_json,
            report_ref=report_ref,
            error=None,
        )

    def mark_retrying(self, item_id: str, *, error: str) -> None:
        self._update(item_id, status=Status.RETRYING.value, error=error)

    def mark_dead_letter(self, item_id: str, *, reason: str) -> None:
        self._update(item_id, status=Status.DEAD_LETTER.value, error=reason)

    def unfinished(
        self,
        limit: int = 1000,
        *,
        older_than: datetime | None = None,
        retrying_older_than: datetime | None = None,
    ) -> list[InboxItem]:
        """Items not yet done or dead-lettered, most urgent and oldest first (for the
        reconciler; payloads are left as stored, encrypted or not). With `older_than`,
        only accepted/processing/triaged items whose last change is before it, and retrying ones
        before `retrying_older_than` (their retry is waiting in the broker; only a lost
        one needs queuing again)."""
        c = inbox_table.c
        if older_than is None:
            stmt = select(inbox_table).where(
                c.status.in_(
                    [
                        Status.ACCEPTED.value,
                        Status.PROCESSING.value,
                        Status.RETRYING.value,
                        Status.TRIAGED.value,
                    ]
                )
            )
        else:
            retry_cut = retrying_older_than or older_than
            stmt = select(inbox_table).where(
                or_(
                    and_(
                        c.status.in_(
                            [
                                Status.ACCEPTED.value,
                                Status.PROCESSING.value,
                                Status.TRIAGED.value,
                            ]
                        ),
                        c.updated_at < older_than,
                    ),
                    and_(c.status == Status.RETRYING.value, c.updated_at < retry_cut),
                )
            )
        stmt = stmt.order_by(inbox_table.c.priority, inbox_table.c.received_at).limit(limit)
        with self._engine.connect() as conn:
            # Payloads stay sealed here: the reconciler needs ids and priorities only, and
            # one unreadable row must not stop it. `get` opens an item's payload.
            return [_item(r) for r in conn.execute(stmt)]

    def latest_done_for(self, patient_keys: list[str]) -> InboxItem | None:
        """The most recently analysed ECG of a patient (triage written, with or without its
        explanations yet), by the keyed hashes of any of the patient's identifiers."""
        if not patient_keys:
            return None
        stmt = (
            select(inbox_table)
            .where(inbox_table.c.patient_key.in_(patient_keys))
            .where(inbox_table.c.status.in_([Status.DONE.value, Status.TRIAGED.value]))
            .order_by(inbox_table.c.received_at.desc())
            .limit(1)
        )
        return self._one(stmt)

    def find_report(self, report_ref: str) -> InboxItem | None:
        """The item whose report is `report_ref` (``DiagnosticReport/<id>``, any version).
        The payload stays as stored (sealed or not): this is an index lookup."""
        c = inbox_table.c
        stmt = (
            select(inbox_table)
            .where(or_(c.report_ref == report_ref, c.report_ref.like(report_ref + "/_history/%")))
            .limit(1)
        )
        rows = self._rows(stmt)
        return rows[0] if rows else None

    def reports_for(self, patient_keys: Iterable[str], *, limit: int) -> list[InboxItem]:
        """Items of a patient that have a report, newest first, by the keyed hashes of the
        patient's identifiers (payloads as stored)."""
        keys = sorted(set(patient_keys))
        if not keys:
            return []
        c = inbox_table.c
        stmt = (
            select(inbox_table)
            .where(c.patient_key.in_(keys), c.report_ref.is_not(None))
            # id breaks ties: report search pages by offset, so the order must be total
            .order_by(c.received_at.desc(), c.id.desc())
            .limit(limit)
        )
        return self._rows(stmt)

    def _rows(self, stmt: Any) -> list[InboxItem]:
        try:
            with self._engine.connect() as conn:
                return [_item(r) for r in conn.execute(stmt)]
        except SQLAlchemyError as exc:
            raise InboxError(f"inbox read failed: {exc.__class__.__name__}") from exc

    def count_by_status(self) -> dict[str, int]:
        from sqlalchemy import func

        stmt = select(inbox_table.c.status, func.count()).group_by(inbox_table.c.status)
        with self._engine.connect() as conn:
            return {str(s): int(n) for s, n in conn.execute(stmt)}

    def _one(self, stmt: Any) -> InboxItem | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(stmt).first()
        except SQLAlchemyError as exc:
            raise InboxError(f"inbox read failed: {exc.__class__.__name__}") from exc
        return None if row is None else self._open(_item(row))

    def _update(self, item_id: str, **values: Any) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    update(inbox_table)
                    .where(inbox_table.c.id == item_id)
                    .values(updated_at=_now(), **values)
                )
        except SQLAlchemyError as exc:
            raise InboxError(f"inbox update failed: {exc.__class__.__name__}") from exc
