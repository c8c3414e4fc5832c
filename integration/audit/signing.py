"""Signed tree heads: Ed25519 signatures over (size, root, timestamp), RFC 6962 3.5 style.

The signed message is ``b"ecgbridge-audit-sth-v1\\n" | size (u64 BE) | timestamp_ms (u64 BE)
| root (32)``. The key id is the first 16 hex digits of SHA-256 of the raw public key.
Verifiers trust public keys from configuration, never keys found in the database.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from integration.audit.errors import AuditKeyError
from integration.audit.keyfile import write_new_file

_DOMAIN = b"ecgbridge-audit-sth-v1\n"


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A signed statement that the log had ``size`` entries with Merkle root ``root``."""

    size: int
    root: bytes
    timestamp_ms: int
    key_id: str
    signature: bytes

    def message(self) -> bytes:
        return head_message(self.size, self.root, self.timestamp_ms)


def head_message(size: int, root: bytes, timestamp_ms: int) -> bytes:
    return _DOMAIN + struct.pack(">QQ", size, timestamp_ms) + root


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise AuditKeyError("an Ed25519 public key must be 32 raw bytes") from exc


class HeadSigner:
    """Signs tree heads with one Ed25519 private key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def generate(cls) -> HeadSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> HeadSigner:
        """A PKCS#8 PEM Ed25519 private key (``openssl genpkey -algorithm ed25519``)."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise AuditKeyError(f"audit signing key {path} is unreadable") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditKeyError(f"audit signing key {path} is not an Ed25519 key")
        return cls(key)

    def save(self, path: Path) -> None:
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_new_file(path, pem)

    def sign(self, size: int, root: bytes, timestamp_ms: int) -> TreeHead:
        sig = self._private.sign(head_message(size, root, timestamp_ms))
        return TreeHead(size, root, timestamp_ms, self.key_id, sig)


class HeadVerifier:
    """Checks tree-head signatures against trusted public keys (current and retired)."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys: Mapping[str, Ed25519PublicKey] = {key_id(k): k for k in keys}

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def check(self, head: TreeHead) -> bool:
        key = self._keys.get(head.key_id)
        if key is None:
            return False
        try:
            key.verify(head.signature, head.message())
        except InvalidSignature:
            return False
        return True
