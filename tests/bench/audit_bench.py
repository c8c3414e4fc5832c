"""Audit log speed: append latency (median, p95) and whole-log verification time.

Targets (issue 9): an append adds < 1 ms at the median to the ingest path; verifying 1
million entries takes < 60 s. ``--entries`` sets the size of the verified log (default
200,000; the time is also given extrapolated to 1,000,000, since verification is one
linear streaming pass). Results go to var/bench/audit.json.

    .venv/bin/python -m tests.bench.audit_bench [--entries N] [--appends N] [--postgres URL]
"""

from __future__ import annotations

import argparse
import contextlib
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

from integration.audit import AuditEvent, AuditLog, EventKind, PatientRef, SqlStore
from integration.audit.codec import ZERO_HASH, encode
from integration.audit.crypto import PhiKeyRing
from integration.audit.merkle import Frontier
from integration.audit.signing import HeadSigner
from integration.audit.store import entries_table, heads_table

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


def bench_append(log: AuditLog, n: int) -> dict[str, float]:
    for i in range(20):  # warm up: connections, catch-up
        log.append(_event(i))
    times = []
    for i in range(n):
        ev = _event(i)
        t = time.perf_counter()
        log.append(ev)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p95_ms": times[int(0.95 * len(times))], "n": n}


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
            log = _make_log(f"sqlite:///{tmp}/append-{sync}.sqlite3", sync)
            results[f"append_sqlite_{sync.lower()}"] = bench_append(log, args.appends)
            log.close()
        if args.postgres:
            for sync_commit in (True, False):
                with fresh_postgres(args.postgres) as url:
                    log = AuditLog(
                        SqlStore.from_url(url, pg_synchronous_commit=sync_commit),
                        signer=HeadSigner.generate(),
                        phi_keys=PhiKeyRing.generate(),
                    )
                    key = "on" if sync_commit else "off"
                    results[f"append_postgresql_sync_{key}"] = bench_append(log, args.appends)
                    log.close()
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
