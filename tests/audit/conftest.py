"""Audit fixtures: a fresh database per test on both engines, and an event factory."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from integration.audit import AuditEvent, AuditLog, EventKind, Outcome, PatientRef
from integration.audit.crypto import PhiKeyRing
from integration.audit.signing import HeadSigner
from integration.audit.store import SqlStore

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty audit database: a SQLite file, or a new database on the PostgreSQL server
    (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/audit.sqlite3"
        return
    import psycopg

    admin = str(request.getfixturevalue("postgres_url")).replace("+psycopg", "")
    name = f"ecgbridge_audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sql_log(audit_url: str) -> Iterator[AuditLog]:
    log = AuditLog(
        SqlStore.from_url(audit_url),
        signer=HeadSigner.generate(),
        phi_keys=PhiKeyRing.generate(),
        head_interval=4,
        head_max_age_s=3600,
    )
    yield log
    log.close()


EventFactory = Callable[..., AuditEvent]


def make_audit_event(
    i: int = 0,
    *,
    kind: EventKind = EventKind.MESSAGE_RECEIVED,
    patient: str | None = "MRN-0001",
    ecg_id: str | None = None,
    **extra: Any,
) -> AuditEvent:
    """Event ``i`` of a test log: recorded ``i`` minutes after T0, with a patient (PHI)."""
    return AuditEvent(
        kind=kind,
        actor="mllp:LAB|HOSP",
        outcome=Outcome.SUCCESS,
        recorded_at=T0 + timedelta(minutes=i),
        patient=None
        if patient is None
        else PatientRef(patient, system="urn:oid:1.2.3", name="Jane Roe", birth_date="1950-02-03"),
        ecg_id=ecg_id or f"ecg{i:04d}",
        message_id=f"MSG{i:05d}",
        **extra,
    )


@pytest.fixture
def make_event() -> EventFactory:
    return make_audit_event
