"""The inbox on SQLite and on the PostgreSQL server: commit, replay, conflict, status."""

from __future__ import annotations

import pytest

from integration.errors import DuplicateConflictError, InboxError
from integration.inbox import Accepted, ContentType, Inbox, Status, make_engine


def _accept(
    inbox: Inbox, key: str, payload: bytes = b"MSH|x", ack: bytes | None = b"ACK"
) -> Accepted:
    return inbox.accept(
        idem_key=key,
        channel="mllp",
        content_type=ContentType.HL7V2,
        payload=payload,
        record_id="r1",
        ack=ack,
    )


def test_accept_then_replay_returns_the_stored_item(database_url: str, unique: str) -> None:
    inbox = Inbox.from_url(database_url)
    first = _accept(inbox, f"hl7:F|{unique}")
    again = _accept(inbox, f"hl7:F|{unique}", ack=b"OTHER")
    assert first.created and not again.created
    assert again.item.id == first.item.id
    assert again.item.ack == b"ACK"
    assert again.item.status is Status.ACCEPTED
    assert again.item.received_at.tzinfo is not None


def test_same_key_different_payload_is_a_conflict(database_url: str, unique: str) -> None:
    inbox = Inbox.from_url(database_url)
    _accept(inbox, f"hl7:F|{unique}", b"one")
    with pytest.raises(DuplicateConflictError):
        _accept(inbox, f"hl7:F|{unique}", b"two")


def test_status_transitions_and_unfinished(database_url: str, unique: str) -> None:
    inbox = Inbox.from_url(database_url)
    item = _accept(inbox, f"hl7:F|{unique}").item
    assert item.id in {i.id for i in inbox.unfinished(limit=100_000)}
    inbox.mark_processing(item.id)
    got = inbox.get(item.id)
    assert got is not None and got.status is Status.PROCESSING and got.attempts == 1
    inbox.mark_done(item.id, result_json="{}", report_ref="DiagnosticReport/x")
    got = inbox.get(item.id)
    assert got is not None and got.status is Status.DONE
    assert got.report_ref == "DiagnosticReport/x"
    assert item.id not in {i.id for i in inbox.unfinished(limit=100_000)}


def test_a_database_that_is_down_raises_inbox_error() -> None:
    inbox = Inbox(make_engine("postgresql://nobody@127.0.0.1:1/none"))
    with pytest.raises(InboxError):
        _accept(inbox, "hl7:F|down")


def test_payloads_are_encrypted_at_rest_and_read_back(database_url: str, unique: str) -> None:
    from sqlalchemy import select

    from integration.audit.crypto import PhiCipher, PhiKeyRing
    from integration.inbox import inbox_table

    cipher = PhiCipher(PhiKeyRing.generate())
    inbox = Inbox.from_url(database_url, cipher=cipher)
    payload = b"MSH|...\rPID|1||MRN12345^^^HOSP||DOE^JANE||19700101|F"
    item = _accept(inbox, f"hl7:F|{unique}", payload).item
    assert item.payload == payload
    with inbox._engine.connect() as conn:
        stored = conn.execute(
            select(inbox_table.c.payload).where(inbox_table.c.id == item.id)
        ).scalar_one()
    assert b"DOE" not in stored and b"MRN12345" not in stored
    # A replay with the same content is still recognised (hash of the plaintext).
    assert not _accept(inbox, f"hl7:F|{unique}", payload).created
    # Without the key the row cannot be read, and says so.
    with pytest.raises(InboxError):
        Inbox.from_url(database_url).get(item.id)
