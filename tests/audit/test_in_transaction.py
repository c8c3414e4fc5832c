"""Audit entries written inside the inbox's transaction (`AuditLog.in_transaction` with
`Inbox.accept`): one commit for the ECG and its entry, both or neither. Both engines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from integration.audit import AuditEvent, AuditLog, AuditStoreError, EventKind, SqlStore
from integration.audit.crypto import PhiKeyRing
from integration.audit.signing import HeadSigner
from integration.inbox import ContentType, Inbox, inbox_table
from tests.audit.conftest import EventFactory, make_audit_event


@pytest.fixture
def pair(audit_url: str) -> Iterator[tuple[AuditLog, Inbox]]:
    log = AuditLog(
        SqlStore.from_url(audit_url),
        signer=HeadSigner.generate(),
        phi_keys=PhiKeyRing.generate(),
        head_interval=2,
    )
    inbox = Inbox.from_url(audit_url, cipher=log.cipher)
    yield log, inbox
    inbox.dispose()
    log.close()


def _accept(inbox: Inbox, key: str, hook: object) -> str:
    return inbox.accept(
        idem_key=key,
        channel="mllp",
        content_type=ContentType.HL7V2,
        payload=f"MSH|{key}".encode(),
        record_id=key,
        in_transaction=hook,  # type: ignore[arg-type]
    ).item.id


def _received(item_id: str) -> AuditEvent:
    return make_audit_event(0, kind=EventKind.MESSAGE_RECEIVED, ecg_id=item_id)


def _items(inbox: Inbox) -> int:
    with inbox._engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(inbox_table)).scalar_one())


def test_item_and_entry_commit_together(pair: tuple[AuditLog, Inbox]) -> None:
    log, inbox = pair
    hook = log.in_transaction(_received)
    ids = [_accept(inbox, f"hl7:A|{i}", hook) for i in range(3)]
    assert log.size() == 3
    assert [log.entry(i).ecg_id for i in range(3)] == ids  # type: ignore[union-attr]
    # a replay commits nothing new, so it writes no entry in the transaction
    assert _accept(inbox, "hl7:A|1", hook) == ids[1]
    assert log.size() == 3
    log.append(make_audit_event(9))  # the ordinary path continues the same chain
    report = log.verify()
    assert report.ok and report.size == 4, report.message
    assert [h.size for h in log.store.heads()] == [1, 2, 4]  # first, then every 2


def test_failed_entry_rolls_the_item_back_and_frees_the_log(
    pair: tuple[AuditLog, Inbox],
) -> None:
    log, inbox = pair

    def broken(item_id: str) -> AuditEvent:
        raise AuditStoreError("audit log unavailable")

    with pytest.raises(AuditStoreError, match="audit log unavailable"):
        _accept(inbox, "hl7:B|1", log.in_transaction(broken))
    assert _items(inbox) == 0 and log.size() == 0
    assert log.append(make_audit_event(1)) == 0  # the lock was released


def test_rolled_back_transaction_leaves_no_entry_and_no_gap(
    pair: tuple[AuditLog, Inbox], make_event: EventFactory
) -> None:
    log, inbox = pair
    hook = log.in_transaction(_received)

    def roll_back() -> None:
        with inbox._engine.begin() as conn:
            finish = hook(conn, "never-committed")
            try:
                raise RuntimeError("the inbox commit failed")
            finally:
                finish(False)

    with pytest.raises(RuntimeError, match="inbox commit failed"):
        roll_back()
    assert log.size() == 0
    assert log.append(make_event(1)) == 0
    assert _accept(inbox, "hl7:C|1", hook) and log.size() == 2
    assert log.verify().ok


def test_stale_state_conflicts_inside_the_transaction_then_retries(
    pair: tuple[AuditLog, Inbox], audit_url: str, make_event: EventFactory
) -> None:
    log, inbox = pair
    other = AuditLog(
        SqlStore.from_url(audit_url), signer=log.signer, phi_keys=PhiKeyRing.generate()
    )
    try:
        assert log.append(make_event(0)) == 0
        assert [other.append(make_event(i)) for i in (1, 2)] == [1, 2]  # log is now stale
        item = _accept(inbox, "hl7:D|1", log.in_transaction(_received))
        assert log.conflicts == 1
        stored = log.entry(3)
        assert stored is not None and stored.ecg_id == item
    finally:
        other.close()
    report = log.verify()
    assert report.ok and report.size == 4, report.message


def test_in_transaction_needs_the_sql_store() -> None:
    with pytest.raises(TypeError, match="SQL store"):
        AuditLog.in_memory().in_transaction(_received)


def test_transaction_on_another_engine_is_refused(
    pair: tuple[AuditLog, Inbox], tmp_path: Path
) -> None:
    """The inbox on another database, even of the same kind (another SQLite file): the
    entry would be committed into the wrong database."""
    log, _ = pair
    other = Inbox.from_url(f"sqlite:///{tmp_path}/another-inbox.sqlite3")
    try:
        with pytest.raises(AuditStoreError, match="one commit needs one database"):
            _accept(other, "hl7:E|1", log.in_transaction(_received))
        assert _items(other) == 0
    finally:
        other.dispose()
