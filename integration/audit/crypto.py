"""PHI at rest: AES-256-GCM with key ids and rotation, and an HMAC-SHA-256 search key.

Token layout (then URL-safe base64): ``0x01 | len(key_id) | key_id | nonce(12) | ct+tag``.
New tokens use the active key; every key in the ring stays readable, so rotating means
adding a key and making it active. The additional authenticated data binds a token to its
purpose (``b"audit-phi"``, ``b"inbox-payload"``), so a token cannot be moved between uses.
The search key is separate from the encryption keys: rotating encryption keys never breaks
patient search.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from integration.audit.errors import AuditKeyError, PhiDecryptionError
from integration.audit.keyfile import write_new_file

_VERSION = 1
_NONCE = 12


def _b64d(text: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), validate=True)
    except ValueError:
        try:
            return base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
        except ValueError as exc:
            raise AuditKeyError(f"{what} is not base64") from exc


@dataclass(frozen=True, slots=True, repr=False)
class PhiKeyRing:
    """AES-256 keys by id, the active one, and the HMAC search key. repr never shows keys."""

    keys: Mapping[str, bytes]
    active: str
    search_key: bytes

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise AuditKeyError(f"active PHI key id {self.active!r} is not in the key ring")
        for kid, key in self.keys.items():
            if len(key) != 32 or not kid or len(kid.encode()) > 64:
                raise AuditKeyError(f"PHI key {kid!r} must be 32 bytes with a short id")
        if len(self.search_key) < 32:
            raise AuditKeyError("the PHI search key must be at least 32 bytes")

    def __repr__(self) -> str:
        return f"PhiKeyRing(active={self.active!r}, ids={sorted(self.keys)!r})"

    @classmethod
    def generate(cls, key_id: str = "k1") -> PhiKeyRing:
        return cls({key_id: AESGCM.generate_key(256)}, key_id, os.urandom(32))

    @classmethod
    def parse(cls, keys: str, search_key: str) -> PhiKeyRing:
        """``keys`` as ``"k2=BASE64,k1=BASE64"`` (the first is active)."""
        ring: dict[str, bytes] = {}
        for part in filter(None, (p.strip() for p in keys.split(","))):
            kid, sep, b64 = part.partition("=")
            if not sep:
                raise AuditKeyError("PHI keys must look like 'id=BASE64,id=BASE64'")
            ring[kid.strip()] = _b64d(b64, what=f"PHI key {kid.strip()!r}")
        if not ring:
            raise AuditKeyError("no PHI keys given")
        return cls(ring, next(iter(ring)), _b64d(search_key, what="PHI search key"))

    @classmethod
    def load(cls, path: Path) -> PhiKeyRing:
        """A JSON key file: ``{"active": id, "keys": {id: b64}, "search_key": b64}``."""
        try:
            doc = json.loads(path.read_text())
            keys = {str(k): _b64d(str(v), what=f"PHI key {k!r}") for k, v in doc["keys"].items()}
            return cls(keys, str(doc["active"]), _b64d(str(doc["search_key"]), what="search key"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AuditKeyError(f"PHI key file {path} is unreadable or malformed") from exc

    def save(self, path: Path) -> None:
        doc = {
            "active": self.active,
            "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()},
            "search_key": base64.b64encode(self.search_key).decode(),
        }
        write_new_file(path, json.dumps(doc).encode())

    def rotated(self, new_id: str) -> PhiKeyRing:
        """A ring with a fresh active key; the old keys stay readable."""
        if new_id in self.keys:
            raise AuditKeyError(f"PHI key id {new_id!r} already exists")
        return PhiKeyRing({new_id: AESGCM.generate_key(256), **self.keys}, new_id, self.search_key)


class PhiCipher:
    """Encrypts and decrypts PHI with a `PhiKeyRing`; computes patient search keys."""

    def __init__(self, ring: PhiKeyRing) -> None:
        self._ring = ring
        self._aead = {kid: AESGCM(key) for kid, key in ring.keys.items()}

    @property
    def active_key_id(self) -> str:
        return self._ring.active

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> str:
        kid = self._ring.active.encode()
        nonce = os.urandom(_NONCE)
        ct = self._aead[self._ring.active].encrypt(nonce, plaintext, aad)
        raw = bytes([_VERSION, len(kid)]) + kid + nonce + ct
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decrypt(self, token: str, *, aad: bytes) -> bytes:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            if raw[0] != _VERSION:
                raise PhiDecryptionError("unknown PHI token version")
            n = raw[1]
            kid = raw[2 : 2 + n].decode()
            nonce, ct = raw[2 + n : 2 + n + _NONCE], raw[2 + n + _NONCE :]
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise PhiDecryptionError("malformed PHI token") from exc
        aead = self._aead.get(kid)
        if aead is None:
            raise PhiDecryptionError(f"PHI key id {kid!r} is not in the key ring")
        try:
            return aead.decrypt(nonce, ct, aad)
        except InvalidTag as exc:
            raise PhiDecryptionError("PHI token failed authentication") from exc

    def token_key_id(self, token: str) -> str:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return raw[2 : 2 + raw[1]].decode()

    def patient_key(self, identifier: str) -> str:
        """HMAC-SHA-256 of the normalised identifier (NFC, trimmed), hex. Search without
        decryption: the same identifier always maps to the same key. The identifier system
        is left out so a reviewer can search by the MRN alone."""
        norm = unicodedata.normalize("NFC", identifier.strip())
        return hmac.new(self._ring.search_key, norm.encode(), hashlib.sha256).hexdigest()
