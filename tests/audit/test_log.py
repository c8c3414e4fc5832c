"""AuditLog on the in-memory twin and on both database engines."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from integration.audit import AuditLog, EventKind, SearchQuery, SqlStore
from integration.audit.crypto import PhiKeyRing
from integration.audit.signing import HeadSigner
from tests.audit.conftest import T0, EventFactory


def test_append_returns_consecutive_indexes_and_signs_heads(make_event: EventFactory) -> None:
    log = AuditLog.in_memory(head_interval=4, head_max_age_s=3600)
    assert [log.append(make_event(i)) for i in range(10)] == list(range(10))
    assert [h.size for h in log.store.heads()] == [1, 4, 8]  # the first head: no earlier one
    report = log.verify()
    assert report.ok, report.message
    assert (report.size, report.signed_size, report.unsigned_entries) == (10, 8, 2)
    assert log.sign_head() is not None
    assert log.verify().unsigned_entries == 0


def test_no_phi_in_entry_bytes_and_patient_readable(make_event: EventFactory) -> None:
    log = AuditLog.in_memory()
    log.append(make_event(0, patient="MRN-777"))
    assert isinstance(log.store, object)
    raw = b"".join(r for _, r, _ in log.store.stream())
    for phi in (b"MRN-777", b"Jane Roe", b"1950-02-03"):
        assert phi not in raw
    [ev] = log.search(SearchQuery(patient_key=log.patient_key(" MRN-777 ")))
    patient = log.patient(ev)
    assert patient is not None and patient.name == "Jane Roe"
    assert "Jane" not in repr(patient)


def test_search_filters(make_event: EventFactory) -> None:
    log = AuditLog.in_memory()
    log.append(make_event(0, patient="A"))
    log.append(
        make_event(
            1,
            patient="B",
            kind=EventKind.ANALYSIS_FINISHED,
            model_version="m2",
            finding="triage-positive",
        )
    )
    log.append(make_event(2, patient="A", kind=EventKind.CDS_FEEDBACK, override=True))
    assert [e.index for e in log.search(SearchQuery(patient_key=log.patient_key("A")))] == [2, 0]
    assert [e.index for e in log.search(SearchQuery(model_version="m2"))] == [1]
    assert [e.index for e in log.search(SearchQuery(finding="triage-positive"))] == [1]
    assert [e.index for e in log.search(SearchQuery(override=True))] == [2]
    q = SearchQuery(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=1))
    assert [e.index for e in log.search(q)] == [1]


def test_proofs_against_signed_heads(make_event: EventFactory) -> None:
    log = AuditLog.in_memory(head_interval=5, head_max_age_s=3600)
    for i in range(13):
        log.append(make_event(i))
    proof = log.inclusion_proof(7)
    assert proof.head.size == 10 and proof.verify()
    assert log.inclusion_proof(12).verify()  # signs a head on demand
    cons = log.consistency_proof(5, 10)
    assert cons.verify()
    assert log.check_entry(3).ok


def test_time_based_heads(make_event: EventFactory) -> None:
    now = [T0]
    log = AuditLog.in_memory(head_interval=1000, head_max_age_s=60, clock=lambda: now[0])
    log.append(make_event(0))
    log.append(make_event(1))
    now[0] = T0 + timedelta(seconds=61)
    log.append(make_event(2))
    assert [h.size for h in log.store.heads()] == [1, 3]


def test_sql_log_round_trip_and_two_writers(
    sql_log: AuditLog, audit_url: str, make_event: EventFactory
) -> None:
    assert isinstance(sql_log.store, SqlStore)
    other = AuditLog(
        SqlStore.from_url(audit_url),
        signer=sql_log.signer,
        phi_keys=PhiKeyRing.generate(),
        head_interval=4,
    )
    try:
        got = []
        for i in range(6):
            got.append(sql_log.append(make_event(i)))
            got.append(other.append(make_event(100 + i)))
        assert got == list(range(12))
    finally:
        other.close()
    report = sql_log.verify()
    assert report.ok, report.message
    assert report.append_only_enforced and report.size == 12
    assert sql_log.inclusion_proof(5).verify()
    [ev] = sql_log.search(SearchQuery(ecg_id="ecg0003"))
    assert ev.message_id == "MSG00003"


def test_sql_store_refuses_update_and_delete(sql_log: AuditLog, make_event: EventFactory) -> None:
    sql_log.append(make_event(0))
    assert isinstance(sql_log.store, SqlStore)
    engine = sql_log.store.engine
    for stmt in (
        "UPDATE audit_entries SET kind = 'x'",
        "DELETE FROM audit_entries",
        "UPDATE audit_tree_heads SET key_id = 'x'",
        "DELETE FROM audit_tree_heads",
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(stmt))
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_entries"))
    assert sql_log.verify().ok


def test_retired_signing_key_still_verifies(make_event: EventFactory) -> None:
    log = AuditLog.in_memory(head_interval=2)
    for i in range(4):
        log.append(make_event(i))
    old = log.signer
    new_signer = HeadSigner.generate()
    rotated = AuditLog(
        log.store,
        signer=new_signer,
        phi_keys=PhiKeyRing.generate(),
        trusted_public_keys=[old.public],
        head_interval=2,
    )
    for i in range(4, 8):
        rotated.append(make_event(i))
    assert rotated.verify().ok
    forgetful = AuditLog(log.store, signer=new_signer, phi_keys=PhiKeyRing.generate())
    assert not forgetful.verify().ok


def test_asynchronous_commit_option(audit_url: str, make_event: EventFactory) -> None:
    store = SqlStore.from_url(audit_url, sqlite_synchronous="FULL", pg_synchronous_commit=False)
    log = AuditLog(store, signer=HeadSigner.generate(), phi_keys=PhiKeyRing.generate())
    try:
        assert [log.append(make_event(i)) for i in range(3)] == [0, 1, 2]
        assert log.verify().ok
    finally:
        log.close()
