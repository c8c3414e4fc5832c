"""Audit fixtures: a fresh database per test on both engines, and an event factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from integration.audit import AuditEvent, AuditLog, EventKind, Outcome, PatientRef
from integration.audit.crypto import PhiKeyRing
from integration.audit.signing import HeadSigner
from integration.audit.store import SqlStore

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


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
