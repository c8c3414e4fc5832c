"""Tamper-evident audit log: RFC 6962 Merkle log with Ed25519-signed tree heads,
append-only storage (SQLite / PostgreSQL), PHI encrypted at rest, FHIR AuditEvent export
(IHE BALP), verification and a review page.

The rest of ecgbridge uses `AuditLog` and the event types re-exported here.
"""

from integration.audit.errors import AuditError, AuditKeyError, AuditStoreError, PhiDecryptionError
from integration.audit.events import AuditEvent, EventKind, Outcome, PatientRef, StoredEvent
from integration.audit.log import AuditLog, ConsistencyProof, EntryCheck, InclusionProof
from integration.audit.store import MemoryStore, SearchQuery, SqlStore
from integration.audit.verify import Problem, VerifyReport

__all__ = [
    "AuditError",
    "AuditEvent",
    "AuditKeyError",
    "AuditLog",
    "AuditStoreError",
    "ConsistencyProof",
    "EntryCheck",
    "EventKind",
    "InclusionProof",
    "MemoryStore",
    "Outcome",
    "PatientRef",
    "PhiDecryptionError",
    "Problem",
    "SearchQuery",
    "SqlStore",
    "StoredEvent",
    "VerifyReport",
]
