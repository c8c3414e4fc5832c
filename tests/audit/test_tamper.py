"""Tampering is detected and the first bad entry is named: flip one byte, delete, reorder,
truncate, replace a signature, rewrite a suffix. On the in-memory twin and on both engines
(the database tests bypass the append-only triggers as a DBA could)."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from integration.audit import AuditLog, MemoryStore, Problem
from integration.audit.codec import encode
from integration.audit.merkle import leaf_hash
from tests.audit.conftest import EventFactory

N = 10  # heads at sizes 1, 4, 8 (head_interval 4)


def _flip(entry: bytes, at: int = 60) -> bytes:
    return entry[:at] + bytes([entry[at] ^ 0x01]) + entry[at + 1 :]


def _memory_log(make_event: EventFactory) -> tuple[AuditLog, MemoryStore]:
    log = AuditLog.in_memory(head_interval=4, head_max_age_s=3600)
    for i in range(N):
        log.append(make_event(i))
    assert isinstance(log.store, MemoryStore)
    return log, log.store


def _memory_cases() -> dict[str, tuple[Callable[[MemoryStore], None], Problem, int]]:
    def flip(s: MemoryStore) -> None:
        s.entries[5] = dataclasses.replace(s.entries[5], entry=_flip(s.entries[5].entry))

    def flip_and_rehash(s: MemoryStore) -> None:
        e = _flip(s.entries[5].entry)
        s.entries[5] = dataclasses.replace(s.entries[5], entry=e, leaf_hash=leaf_hash(e))

    def delete(s: MemoryStore) -> None:
        del s.entries[5]

    def reorder(s: MemoryStore) -> None:
        a, b = s.entries[3], s.entries[4]
        s.entries[3] = dataclasses.replace(b, index=3)
        s.entries[4] = dataclasses.replace(a, index=4)

    def truncate(s: MemoryStore) -> None:
        del s.entries[6:]

    def replace_signature(s: MemoryStore) -> None:
        h4 = next(h for h in s.tree_heads if h.size == 4)
        s.tree_heads = [
            dataclasses.replace(h, signature=h4.signature) if h.size == 8 else h
            for h in s.tree_heads
        ]

    return {
        "flip-byte": (flip, Problem.CONTENT_ALTERED, 5),
        "flip-byte-and-rehash": (flip_and_rehash, Problem.CHAIN_BROKEN, 5),
        "delete": (delete, Problem.MISSING_ENTRY, 5),
        "reorder": (reorder, Problem.REORDERED, 3),
        "truncate": (truncate, Problem.TRUNCATED, 6),
        "replace-signature": (replace_signature, Problem.BAD_SIGNATURE, 7),
    }


@pytest.mark.parametrize("case", list(_memory_cases()))
def test_memory_tampering_is_detected(case: str, make_event: EventFactory) -> None:
    log, store = _memory_log(make_event)
    assert log.verify().ok
    tamper, problem, index = _memory_cases()[case]
    tamper(store)
    report = log.verify()
    assert not report.ok
    assert (report.problem, report.first_bad_index) == (problem, index), report.message


def test_rewritten_suffix_fails_at_the_signed_head(make_event: EventFactory) -> None:
    """An attacker who rewrites entries 5.. consistently (chain and leaf hashes) cannot sign:
    the head at size 8 fails, and the first entry not covered by a good head is named."""
    log, store = _memory_log(make_event)
    del store.entries[5:]
    prev = store.entries[4].leaf_hash
    for i in range(5, N):
        row = encode(i, prev, make_event(i, patient="MRN-FORGED"), log.cipher)
        store.entries.append(row)
        prev = row.leaf_hash
    report = log.verify()
    assert (report.problem, report.first_bad_index) == (Problem.ROOT_MISMATCH, 4)
    assert not log.check_entry(6).ok
    assert log.check_entry(2).ok


def _sql(url: str, statements: list[tuple[str, dict[str, Any]]]) -> None:
    """Run raw statements with the append-only triggers bypassed."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
        for name in names:
            conn.execute(f"DROP TRIGGER {name}")
        for stmt, params in statements:
            conn.execute(stmt, params)
        conn.commit()
        conn.close()
        return
    import psycopg

    with psycopg.connect(url) as pg:
        pg.execute("SET session_replication_role = replica")
        for stmt, params in statements:
            pg.execute(re.sub(r":(\w+)", r"%(\1)s", stmt), params)
        pg.commit()


def test_sql_tampering_is_detected(
    sql_log: AuditLog, audit_url: str, make_event: EventFactory
) -> None:
    for i in range(N):
        sql_log.append(make_event(i))
    assert sql_log.verify().ok
    rows = {r.index: r for r in sql_log.store.rows(list(range(N)))}
    heads = {h.size: h for h in sql_log.store.heads()}

    # Each step tampers further; the first bad entry is named each time.
    _sql(
        audit_url,
        [("UPDATE audit_tree_heads SET signature = :s WHERE size = 8", {"s": heads[4].signature})],
    )
    r = sql_log.verify()
    assert (r.problem, r.first_bad_index) == (Problem.BAD_SIGNATURE, 7), r.message
    assert not r.append_only_enforced or audit_url.startswith("postgresql")
    _sql(
        audit_url,
        [("UPDATE audit_tree_heads SET signature = :s WHERE size = 8", {"s": heads[8].signature})],
    )
    assert sql_log.verify().ok

    _sql(audit_url, [("DELETE FROM audit_entries WHERE idx >= 6", {})])
    r = sql_log.verify()
    assert (r.problem, r.first_bad_index) == (Problem.TRUNCATED, 6), r.message

    _sql(
        audit_url,
        [
            ("UPDATE audit_entries SET entry = :e WHERE idx = 4", {"e": rows[3].entry}),
            ("UPDATE audit_entries SET leaf_hash = :h WHERE idx = 4", {"h": rows[3].leaf_hash}),
        ],
    )
    r = sql_log.verify()
    assert (r.problem, r.first_bad_index) == (Problem.REORDERED, 4), r.message

    _sql(audit_url, [("DELETE FROM audit_entries WHERE idx = 2", {})])
    r = sql_log.verify()
    assert (r.problem, r.first_bad_index) == (Problem.MISSING_ENTRY, 2), r.message

    _sql(
        audit_url,
        [("UPDATE audit_entries SET entry = :e WHERE idx = 1", {"e": _flip(rows[1].entry)})],
    )
    r = sql_log.verify()
    assert (r.problem, r.first_bad_index) == (Problem.CONTENT_ALTERED, 1), r.message
