"""PHI encryption at rest: AES-GCM with key ids, rotation, tamper detection, HMAC keys."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from integration.audit import AuditLog, MemoryStore, PhiDecryptionError, SearchQuery
from integration.audit.config import AuditSettings, load_phi_keys, load_signer
from integration.audit.crypto import PhiCipher, PhiKeyRing
from integration.audit.errors import AuditKeyError
from integration.audit.signing import HeadSigner
from tests.audit.conftest import EventFactory


def test_round_trip_rotation_and_old_keys_readable() -> None:
    ring = PhiKeyRing.generate("k1")
    old = PhiCipher(ring).encrypt(b"MRN-1", aad=b"a")
    rotated = PhiCipher(ring.rotated("k2"))
    new = rotated.encrypt(b"MRN-2", aad=b"a")
    assert rotated.token_key_id(old) == "k1" and rotated.token_key_id(new) == "k2"
    assert rotated.decrypt(old, aad=b"a") == b"MRN-1"
    assert rotated.decrypt(new, aad=b"a") == b"MRN-2"
    with pytest.raises(PhiDecryptionError, match="k2"):
        PhiCipher(ring).decrypt(new, aad=b"a")
    with pytest.raises(PhiDecryptionError):
        rotated.decrypt(old, aad=b"other purpose")
    raw = bytearray(base64.urlsafe_b64decode(new + "=" * (-len(new) % 4)))
    raw[-1] ^= 1
    with pytest.raises(PhiDecryptionError):
        rotated.decrypt(base64.urlsafe_b64encode(bytes(raw)).decode(), aad=b"a")


def test_same_plaintext_encrypts_differently_but_hmac_is_stable() -> None:
    c = PhiCipher(PhiKeyRing.generate())
    assert c.encrypt(b"x", aad=b"a") != c.encrypt(b"x", aad=b"a")
    assert c.patient_key("MRN-1") == c.patient_key(" MRN-1 ") != c.patient_key("MRN-2")
    assert PhiCipher(PhiKeyRing.generate()).patient_key("MRN-1") != c.patient_key("MRN-1")


def test_log_after_phi_key_rotation(make_event: EventFactory) -> None:
    ring = PhiKeyRing.generate("k1")
    log = AuditLog(MemoryStore(), signer=HeadSigner.generate(), phi_keys=ring)
    log.append(make_event(0, patient="OLD"))
    log2 = AuditLog(log.store, signer=log.signer, phi_keys=ring.rotated("k2"))
    log2.append(make_event(1, patient="NEW"))
    events = log2.search(SearchQuery(newest_first=False))
    patients = [log2.patient(e) for e in events]
    assert [p.identifier for p in patients if p is not None] == ["OLD", "NEW"]
    assert [log2.cipher.token_key_id(e.phi_token or "") for e in events] == ["k1", "k2"]
    assert log2.verify().ok


def test_keys_from_settings(tmp_path: Path) -> None:
    k = base64.b64encode(bytes(range(32))).decode()
    s = AuditSettings(phi_keys=f"k9={k},k1={k}", phi_search_key=k, data_dir=tmp_path)
    ring = load_phi_keys(s)
    assert ring.active == "k9" and set(ring.keys) == {"k9", "k1"}
    assert "k9" in repr(ring) and k not in repr(ring)
    prod = AuditSettings(environment="production", data_dir=tmp_path / "p")
    with pytest.raises(AuditKeyError):
        load_phi_keys(prod)
    with pytest.raises(AuditKeyError):
        load_signer(prod)
    dev = AuditSettings(data_dir=tmp_path / "d")
    assert load_signer(dev).key_id == load_signer(dev).key_id  # generated once, then reused
    assert (dev.key_file.stat().st_mode & 0o777) == 0o600
    assert load_phi_keys(dev).active == load_phi_keys(dev).active


def test_no_phi_in_logs(make_event: EventFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    log = AuditLog.in_memory(head_interval=1)
    for i in range(3):
        log.append(make_event(i, patient="MRN-SECRET"))
    log.verify()
    assert "MRN-SECRET" not in caplog.text and "Jane" not in caplog.text
