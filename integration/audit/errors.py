"""Audit errors; each says what the outside world gets."""

from __future__ import annotations

from inference.errors import EcgBridgeError


class AuditError(EcgBridgeError):
    """Base of the audit log's errors."""


class AuditStoreError(AuditError, OSError):
    """The audit store cannot be read or written (database down, disk full). The caller must
    treat the audited action as not audited: ingest answers AE / 503, never AA / 202."""


class AuditKeyError(AuditError, ValueError):
    """Signing or PHI keys are missing or malformed. Startup fails with this message; keys are
    generated automatically only in the development environment."""


class PhiDecryptionError(AuditError, ValueError):
    """A PHI token cannot be decrypted: unknown key id (a retired key was dropped from the
    key ring) or the ciphertext was altered. The review page shows the field as unreadable."""
