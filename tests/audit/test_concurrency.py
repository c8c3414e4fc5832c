"""Several writers on one audit database: the in-memory chain state never forks the chain.

Each writer keeps its next index in memory and inserts without reading first; the primary
key on the index refuses a second entry at a taken position, and the loser catches up and
retries. Real processes on both engines (a SQLite file, the PostgreSQL server).
"""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from integration.audit import AuditLog, SearchQuery, SqlStore
from integration.audit.crypto import PhiKeyRing
from integration.audit.signing import HeadSigner
from tests.audit.conftest import EventFactory, make_audit_event

WRITERS = 4
PER_WRITER = 40


def _writer(url: str, key_file: Path, writer: int, start: Any, out: Any) -> None:
    log = AuditLog(
        SqlStore.from_url(url),
        signer=HeadSigner.load(key_file),
        phi_keys=PhiKeyRing.generate(),
        head_interval=8,
    )
    log.append(make_audit_event(writer * 1000, ecg_id=f"w{writer}-warm"))
    out.put(("ready", writer))
    start.wait(60)
    for i in range(PER_WRITER):
        log.append(make_audit_event(writer * 1000 + i, ecg_id=f"w{writer}-{i:03d}"))
    out.put(("conflicts", log.conflicts))
    log.close()
    raise SystemExit(0)


def test_writers_in_several_processes_keep_one_chain(audit_url: str, tmp_path: Path) -> None:
    signer = HeadSigner.generate()
    signer.save(tmp_path / "head.pem")
    SqlStore.from_url(audit_url).dispose()  # the schema, before the writers race for it
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(audit_url, tmp_path / "head.pem", w, start, out))
        for w in range(WRITERS)
    ]
    for p in procs:
        p.start()
    # every writer has appended once (and so holds chain state) before any goes on: all
    # but the last of them start out stale and must hit a taken index
    assert sorted(out.get(timeout=120) for _ in procs) == [("ready", w) for w in range(WRITERS)]
    start.set()
    conflicts = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    assert sum(n for _, n in conflicts) >= WRITERS - 1

    log = AuditLog(SqlStore.from_url(audit_url), signer=signer, phi_keys=PhiKeyRing.generate())
    try:
        report = log.verify()
        assert report.ok, report.message
        assert report.size == WRITERS * (PER_WRITER + 1)
        events = log.search(SearchQuery(limit=10_000, newest_first=False))
        per_writer = Counter(e.ecg_id.split("-")[0] for e in events if e.ecg_id)
        assert per_writer == {f"w{w}": PER_WRITER + 1 for w in range(WRITERS)}
        # each writer's own entries stay in its order
        for w in range(WRITERS):
            mine = [e.ecg_id for e in events if e.ecg_id and e.ecg_id.startswith(f"w{w}-")]
            assert mine == [f"w{w}-warm"] + [f"w{w}-{i:03d}" for i in range(PER_WRITER)]
    finally:
        log.close()


def test_stale_writer_conflicts_then_catches_up(
    sql_log: AuditLog, audit_url: str, make_event: EventFactory
) -> None:
    other = AuditLog(
        SqlStore.from_url(audit_url), signer=sql_log.signer, phi_keys=PhiKeyRing.generate()
    )
    try:
        assert other.append(make_event(0)) == 0  # other now believes the next index is 1
        assert [sql_log.append(make_event(i)) for i in (1, 2, 3)] == [1, 2, 3]
        assert other.append(make_event(4)) == 4  # index 1 taken: caught up, retried at 4
        assert other.conflicts == 1
        assert sql_log.conflicts == 0
    finally:
        other.close()
    report = sql_log.verify()
    assert report.ok and report.size == 5, report.message


@pytest.mark.parametrize("audit_url", ["postgresql"], indirect=True)  # a server to drop it
def test_append_reconnects_after_the_server_drops_its_connection(
    audit_url: str, make_event: EventFactory
) -> None:
    log = AuditLog(
        SqlStore.from_url(audit_url), signer=HeadSigner.generate(), phi_keys=PhiKeyRing.generate()
    )
    try:
        assert log.append(make_event(0)) == 0
        assert isinstance(log.store, SqlStore)
        with log.store.engine.begin() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert killed >= 1
        assert log.append(make_event(1)) == 1
        assert log.append(make_event(2)) == 2
        report = log.verify()
        assert report.ok and report.size == 3, report.message
    finally:
        log.close()


def test_an_insert_that_committed_before_its_connection_was_lost_is_not_appended_twice(
    audit_url: str, make_event: EventFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store resends an insert whose connection dropped; when the first one had in
    fact committed, the resend finds the index taken. The log must see its own leaf there
    and stop, not append the event again at the next index."""
    store = SqlStore.from_url(audit_url)
    log = AuditLog(store, signer=HeadSigner.generate(), phi_keys=PhiKeyRing.generate())
    try:
        assert log.append(make_event(0)) == 0
        real_insert_once = store._insert_once
        calls = []

        def commit_then_lose_the_reply(row: Any, head: Any) -> None:
            calls.append(row.index)
            real_insert_once(row, head)
            if len(calls) == 1:
                raise DBAPIError(
                    "INSERT",
                    {},
                    Exception("server closed the connection"),
                    connection_invalidated=True,
                )

        monkeypatch.setattr(store, "_insert_once", commit_then_lose_the_reply)
        assert log.append(make_event(1)) == 1
        assert calls == [1, 1]  # the resend, found taken
        monkeypatch.undo()
        assert log.append(make_event(2)) == 2
        report = log.verify()
        assert report.ok and report.size == 3, report.message
        assert log.conflicts == 0
    finally:
        log.close()
