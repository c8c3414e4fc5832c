"""Audit log speed: append latency (median, p95, p99) and whole-log verification time.

Targets (issue 9): an append adds < 1 ms at the median to the ingest path; verifying 1
million entries takes < 60 s. Each engine's append is also compared with its peer in the
same run: a plain INSERT of the same row (same columns and bytes, one transaction, no chain,
no signing) into a table without triggers, through a pooled SQLAlchemy engine as ordinary
application code writes it (``ratio_to_plain_insert``). ``--entries`` sets the size of the
verified log (default 200,000; the time is also given extrapolated to 1,000,000, since
verification is one linear streaming pass). Results go to var/bench/audit.json.

    .venv/bin/python -m tests.bench.audit_bench [--entries N] [--appends N] [--postgres URL]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Index, MetaData, Table

from integration.audit import AuditEvent, AuditLog, EventKind, PatientRef, SqlStore
from integration.audit.codec import ZERO_HASH, encode
from integration.audit.crypto import PhiKeyRing
from integration.audit.merkle import Frontier
from integration.audit.signing import HeadSigner
from integration.audit.store import entries_table, entry_values, heads_table, make_engine
from integration.inbox import ContentType, Inbox, TransactionHook

OUT = Path("var/bench")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.ANALYSIS_FINISHED,
        actor="worker:1",
        recorded_at=T0 + timedelta(seconds=i),
        patient=PatientRef(
            f"MRN-{i % 5000:06d}", system="urn:oid:1.2.3", name="Jane Roe", birth_date="1950-02-03"
        ),
        ecg_id=f"{i:032x}",
        message_id=f"MSG{i:08d}",
        model_version="triage-1.0.0",
        finding="triage-positive" if i % 7 == 0 else "triage-negative",
        detail={
            "probability": 0.4321,
            "territory": "LAD",
            "fairness": "stable",
            "explanation": "ST elevation V2-V4",
        },
    )


def _make_log(url: str, sync: str = "NORMAL") -> AuditLog:
    return AuditLog(
        SqlStore.from_url(url, sqlite_synchronous=sync),
        signer=HeadSigner.generate(),
        phi_keys=PhiKeyRing.generate(),
    )


def _stats(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "median_ms": round(statistics.median(times), 4),
        "p95_ms": round(times[int(0.95 * len(times))], 4),
        "p99_ms": round(times[int(0.99 * len(times))], 4),
        "n": len(times),
    }


def bench_append(log: AuditLog, n: int) -> dict[str, float]:
    for i in range(20):  # warm up: connections, catch-up
        log.append(_event(i))
    times = []
    for i in range(n):
        ev = _event(i)
        t = time.perf_counter()
        log.append(ev)
        times.append((time.perf_counter() - t) * 1000)
    return _stats(times)


def bench_plain_insert(url: str, n: int, *, sqlite_synchronous: str = "NORMAL") -> dict[str, float]:
    """The peer: the same encoded row inserted into a copy of the entries table (no
    triggers), one ``engine.begin()`` per row."""
    engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
    plain = Table(  # the entries table's columns and indexes, without its triggers
        "audit_bench_plain",
        MetaData(),
        *(c._copy() for c in entries_table.columns),
        *(Index(f"{ix.name}_plain", *(c.name for c in ix.columns)) for ix in entries_table.indexes),
    )
    plain.create(engine, checkfirst=True)
    cipher = AuditLog.in_memory().cipher
    rows = [entry_values(encode(i, ZERO_HASH, _event(i), cipher)) for i in range(n + 20)]
    times = []
    for i, values in enumerate(rows):
        t = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(plain.insert().values(**values))
        if i >= 20:  # warm up as bench_append does
            times.append((time.perf_counter() - t) * 1000)
    engine.dispose()
    return _stats(times)


def _with_ratio(append: dict[str, float], plain: dict[str, float]) -> dict[str, Any]:
    return {
        **append,
        "plain_insert": plain,
        "ratio_to_plain_insert": round(append["median_ms"] / plain["median_ms"], 2),
        "p99_ratio_to_plain_insert": round(append["p99_ms"] / plain["p99_ms"], 2),
    }


def bench_ingest_path(url: str, n: int, *, payload_bytes: int = 8192) -> dict[str, Any]:
    """What auditing adds to the ingest commit: the inbox commit alone, with a separate
    audit append (two commits), and with the entry in the inbox's transaction (one commit,
    `AuditLog.in_transaction`). The three run interleaved, so load drift hits all alike."""
    log = AuditLog(
        SqlStore.from_url(url), signer=HeadSigner.generate(), phi_keys=PhiKeyRing.generate()
    )
    inbox = Inbox.from_url(url, cipher=log.cipher)
    payload = bytes(range(256)) * (payload_bytes // 256)

    def accept(key: str, hook: TransactionHook | None = None) -> str:
        return inbox.accept(
            idem_key=key,
            channel="bench",
            content_type=ContentType.HL7V2,
            payload=payload,
            record_id=key,
            in_transaction=hook,
        ).item.id

    def received(i: int, item_id: str | None) -> AuditEvent:
        return dataclasses.replace(_event(i), kind=EventKind.MESSAGE_RECEIVED, ecg_id=item_id)

    def received_in_tx(i: int) -> TransactionHook:
        return log.in_transaction(lambda item_id: received(i, item_id))

    times: dict[str, list[float]] = {"inbox_only": [], "separate_append": [], "one_commit": []}
    for i in range(n + 20):
        for variant, out in times.items():
            key = f"{variant}:{i}"
            t = time.perf_counter()
            if variant == "inbox_only":
                accept(key)
            elif variant == "separate_append":
                log.append(received(i, None))  # the audit entry before the commit
                accept(key)
            else:
                accept(key, received_in_tx(i))
            if i >= 20:
                out.append((time.perf_counter() - t) * 1000)
    inbox.dispose()
    log.close()
    stats = {k: _stats(v) for k, v in times.items()}
    base = stats["inbox_only"]["median_ms"]
    return {
        **stats,
        "payload_bytes": len(payload),
        "added_median_ms_separate_append": round(stats["separate_append"]["median_ms"] - base, 4),
        "added_median_ms_one_commit": round(stats["one_commit"]["median_ms"] - base, 4),
        "ratio_one_commit_to_inbox_only": round(stats["one_commit"]["median_ms"] / base, 2),
        "ratio_separate_to_inbox_only": round(stats["separate_append"]["median_ms"] / base, 2),
    }


def bulk_load(
    store: SqlStore, n: int, *, head_interval: int = 256
) -> tuple[float, Ed25519PublicKey]:
    """Fill an empty store with ``n`` valid entries (one transaction per 20,000)."""
    t0 = time.perf_counter()
    signer, cipher = HeadSigner.generate(), AuditLog.in_memory().cipher
    frontier, prev = Frontier(), ZERO_HASH
    rows: list[dict[str, Any]] = []
    heads: list[dict[str, Any]] = []
    for i in range(n):
        r = encode(i, prev, _event(i), cipher)
        frontier.append(r.leaf_hash)
        prev = r.leaf_hash
        rows.append(
            {
                "idx": i,
                "recorded_ms": r.recorded_ms,
                "kind": r.kind,
                "outcome": r.outcome,
                "patient_key": r.patient_key,
                "ecg_id": r.ecg_id,
                "model_version": r.model_version,
                "finding": r.finding,
                "override": r.override,
                "leaf_hash": r.leaf_hash,
                "entry": r.entry,
            }
        )
        if frontier.size % head_interval == 0 or i == n - 1:
            h = signer.sign(frontier.size, frontier.root(), r.recorded_ms)
            heads.append(
                {
                    "size": h.size,
                    "root": h.root,
                    "timestamp_ms": h.timestamp_ms,
                    "key_id": h.key_id,
                    "signature": h.signature,
                }
            )
        if len(rows) == 20_000 or i == n - 1:
            with store.engine.begin() as conn:
                conn.execute(entries_table.insert(), rows)
                if heads:
                    conn.execute(heads_table.insert(), heads)
            rows, heads = [], []
    return time.perf_counter() - t0, signer.public


def bench_verify(url: str, n: int) -> dict[str, Any]:
    store = SqlStore.from_url(url)
    load_s, public = bulk_load(store, n)
    log = AuditLog(
        store,
        signer=HeadSigner.generate(),
        phi_keys=PhiKeyRing.generate(),
        trusted_public_keys=[public],
    )
    t = time.perf_counter()
    report = log.verify()
    secs = time.perf_counter() - t
    log.close()
    assert report.ok, report.message
    return {
        "entries": n,
        "load_s": round(load_s, 1),
        "verify_s": round(secs, 2),
        "verify_s_per_million": round(secs * 1_000_000 / n, 1),
        "us_per_entry": round(secs / n * 1e6, 2),
    }


@contextlib.contextmanager
def fresh_postgres(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``admin_url``, dropped afterwards."""
    import psycopg

    name = f"ecgbridge_audit_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--entries", type=int, default=200_000)
    p.add_argument("--appends", type=int, default=2000)
    p.add_argument(
        "--postgres",
        default=None,
        help="also measure on PostgreSQL (a server URL; the bench "
        "creates and drops its own databases there)",
    )
    args = p.parse_args(argv)
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat()}
    with tempfile.TemporaryDirectory() as tmp:
        mem = AuditLog.in_memory()
        results["append_memory"] = bench_append(mem, args.appends)
        for sync in ("NORMAL", "FULL"):
            url = f"sqlite:///{tmp}/append-{sync}.sqlite3"
            log = _make_log(url, sync)
            appended = bench_append(log, args.appends)
            log.close()
            plain = bench_plain_insert(url, args.appends, sqlite_synchronous=sync)
            results[f"append_sqlite_{sync.lower()}"] = _with_ratio(appended, plain)
        results["ingest_path_sqlite"] = bench_ingest_path(
            f"sqlite:///{tmp}/ingest.sqlite3", args.appends
        )
        if args.postgres:
            for sync_commit in (True, False):
                with fresh_postgres(args.postgres) as url:
                    log = AuditLog(
                        SqlStore.from_url(url, pg_synchronous_commit=sync_commit),
                        signer=HeadSigner.generate(),
                        phi_keys=PhiKeyRing.generate(),
                    )
                    key = "on" if sync_commit else "off"
                    appended = bench_append(log, args.appends)
                    log.close()
                    entry = f"append_postgresql_sync_{key}"
                    if sync_commit:  # the peer commits synchronously, as the inbox does
                        plain = bench_plain_insert(url, args.appends)
                        results[entry] = _with_ratio(appended, plain)
                    else:
                        results[entry] = appended
            with fresh_postgres(args.postgres) as url:
                results["ingest_path_postgresql"] = bench_ingest_path(url, args.appends)
        print(json.dumps(results, indent=2), file=sys.stderr, flush=True)
        results["verify_sqlite"] = bench_verify(f"sqlite:///{tmp}/verify.sqlite3", args.entries)
        print(json.dumps(results["verify_sqlite"]), file=sys.stderr, flush=True)
        if args.postgres:
            with fresh_postgres(args.postgres) as url:
                results["verify_postgresql"] = bench_verify(url, min(args.entries, 200_000))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "audit.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
