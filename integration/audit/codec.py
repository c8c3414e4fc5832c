"""The bytes of an audit entry (the RFC 6962 leaf input) and their decoding.

``entry = index (u64 BE) | previous leaf hash (32) | canonical JSON``. The index inside the
entry makes a reordered log fail at the first moved entry; the previous leaf hash chains
entries, so an entry whose content and stored leaf hash were both rewritten still breaks at
its successor. Canonical JSON: sorted keys, no spaces, UTF-8, no NaN.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from integration.audit.crypto import PhiCipher
from integration.audit.errors import PhiDecryptionError
from integration.audit.events import (
    AuditEvent,
    DetailValue,
    EventKind,
    Outcome,
    PatientRef,
    StoredEvent,
)
from integration.audit.merkle import HASH_SIZE, leaf_hash

HEADER = 8 + HASH_SIZE
ZERO_HASH = bytes(HASH_SIZE)
PHI_AAD = b"ecgbridge-audit-phi-v1"


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One stored entry: the leaf input and its leaf hash, plus search columns copied from
    it (columns are an index only; reads re-derive every field from ``entry``)."""

    index: int
    entry: bytes
    leaf_hash: bytes
    recorded_ms: int
    kind: str
    outcome: str
    patient_key: str | None
    ecg_id: str | None
    model_version: str | None
    finding: str | None
    override: bool


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def encode(index: int, prev: bytes, event: AuditEvent, cipher: PhiCipher) -> EntryRow:
    patient_key = phi = None
    if event.patient is not None:
        p = event.patient
        patient_key = cipher.patient_key(p.identifier)
        plain = json.dumps(
            {
                "identifier": p.identifier,
                "system": p.system,
                "name": p.name,
                "birth_date": p.birth_date,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        phi = cipher.encrypt(plain.encode(), aad=PHI_AAD)
    recorded_ms = _ms(event.recorded_at)
    body: dict[str, Any] = {
        "v": 1,
        "ts": recorded_ms,
        "kind": event.kind.value,
        "outcome": event.outcome.value,
        "actor": event.actor,
        "patient_key": patient_key,
        "phi": phi,
        "ecg_id": event.ecg_id,
        "message_id": event.message_id,
        "resource": event.resource,
        "model_version": event.model_version,
        "finding": event.finding,
        "override": event.override,
        "detail": dict(event.detail),
    }
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    entry = struct.pack(">Q", index) + prev + text.encode()
    return EntryRow(
        index=index,
        entry=entry,
        leaf_hash=leaf_hash(entry),
        recorded_ms=recorded_ms,
        kind=event.kind.value,
        outcome=event.outcome.value,
        patient_key=patient_key,
        ecg_id=event.ecg_id,
        model_version=event.model_version,
        finding=event.finding,
        override=event.override,
    )


def entry_index(entry: bytes) -> int:
    return int.from_bytes(entry[:8], "big")


def entry_prev(entry: bytes) -> bytes:
    return entry[8:HEADER]


def decode(entry: bytes) -> StoredEvent:
    """Parse an entry's bytes. Raises ValueError when they are not a valid entry."""
    if len(entry) <= HEADER:
        raise ValueError("entry too short")
    body = json.loads(entry[HEADER:].decode())
    detail: dict[str, DetailValue] = {str(k): v for k, v in dict(body["detail"]).items()}
    return StoredEvent(
        index=entry_index(entry),
        kind=EventKind(body["kind"]),
        actor=str(body["actor"]),
        outcome=Outcome(body["outcome"]),
        recorded_at=datetime.fromtimestamp(int(body["ts"]) / 1000, UTC),
        patient_key=body["patient_key"],
        phi_token=body["phi"],
        ecg_id=body["ecg_id"],
        message_id=body["message_id"],
        resource=body["resource"],
        model_version=body["model_version"],
        finding=body["finding"],
        override=bool(body["override"]),
        detail=detail,
        leaf_hash=leaf_hash(entry),
    )


def decrypt_patient(event: StoredEvent, cipher: PhiCipher) -> PatientRef | None:
    """The patient of a stored event, or None when it has none. Raises
    `PhiDecryptionError` when the token cannot be read."""
    if event.phi_token is None:
        return None
    doc = json.loads(cipher.decrypt(event.phi_token, aad=PHI_AAD))
    if not isinstance(doc, dict):
        raise PhiDecryptionError("PHI token holds no patient")
    return PatientRef(
        identifier=str(doc["identifier"]),
        system=str(doc.get("system") or ""),
        name=doc.get("name"),
        birth_date=doc.get("birth_date"),
    )
