"""IngestService: validate, commit, queue; the ACK for every case (SQLite inbox)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from integration.inbox import Inbox, Status, make_engine
from integration.ingest import IngestService, decode_item, hl7_idempotency_key
from integration.mllp_client import ack_code
from integration.samples import Sample, load_samples
from mappers.hl7v2 import build_oru_r01, parse_msh

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class Queue:
    """In-memory twin of the Celery enqueue function."""

    def __init__(self, fail: bool = False) -> None:
        self.items: list[tuple[str, int]] = []
        self.fail = fail

    def __call__(self, item_id: str, priority: int) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.items.append((item_id, priority))


@pytest.fixture(scope="module")
def sample() -> Sample:
    return load_samples()[0]


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    return Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")


def _msg(sample: Sample, control_id: str = "C1") -> bytes:
    return build_oru_r01(sample.record, control_id=control_id, now=NOW)


def _receive(svc: IngestService, message: bytes) -> bytes:
    ack = svc.receive_hl7(message)
    assert ack is not None
    return ack


def _err(ack: bytes) -> str:
    return next((s.decode() for s in ack.split(b"\r") if s.startswith(b"ERR")), "")


def test_valid_oru_is_committed_queued_and_acked(inbox: Inbox, sample: Sample) -> None:
    q = Queue()
    ack = _receive(IngestService(inbox=inbox, enqueue=q), _msg(sample))
    assert ack_code(ack) == "AA"
    item = inbox.find_by_key(hl7_idempotency_key(parse_msh(_msg(sample))))
    assert item is not None and item.status is Status.ACCEPTED
    assert q.items == [(item.id, item.priority)]
    assert item.ack == ack
    record = decode_item(item)
    assert record.record_id == sample.record.record_id


def test_replay_gets_the_identical_ack_and_is_not_queued_again(
    inbox: Inbox, sample: Sample
) -> None:
    q = Queue()
    svc = IngestService(inbox=inbox, enqueue=q)
    first = _receive(svc, _msg(sample))
    second = _receive(svc, _msg(sample))
    assert first == second
    assert len(q.items) == 1


def test_same_control_id_different_content_is_refused(inbox: Inbox, sample: Sample) -> None:
    svc = IngestService(inbox=inbox, enqueue=Queue())
    _receive(svc, _msg(sample))
    other = load_samples()[1]
    ack = _receive(svc, _msg(other, control_id="C1"))
    assert ack_code(ack) == "AE"
    assert "205" in _err(ack)


def test_not_an_oru_gets_ar_and_nothing_is_stored(inbox: Inbox) -> None:
    q = Queue()
    ack = _receive(
        IngestService(inbox=inbox, enqueue=q),
        b"MSH|^~\\&|X|WARD|Y|Z|20260101||ADT^A01|A1|P|2.5.1\rPID|1",
    )
    assert ack_code(ack) == "AR"
    assert "200" in _err(ack)
    assert inbox.count_by_status() == {} and q.items == []


def test_missing_lead_gets_ae_naming_the_problem(inbox: Inbox, sample: Sample) -> None:
    msg = b"\r".join(s for s in _msg(sample).split(b"\r") if b"V4" not in s)
    ack = _receive(IngestService(inbox=inbox, enqueue=Queue()), msg)
    assert ack_code(ack) == "AE"
    assert "V4" in _err(ack)
    assert inbox.count_by_status() == {}


def test_non_numeric_samples_get_ae_with_the_obx_location(inbox: Inbox, sample: Sample) -> None:
    segs = _msg(sample).split(b"\r")
    i = next(k for k, s in enumerate(segs) if s.startswith(b"OBX") and b"|NA|" in s)
    fields = segs[i].split(b"|")
    fields[5] = fields[5].replace(b"^", b"^abc^", 1)
    segs[i] = b"|".join(fields)
    ack = _receive(IngestService(inbox=inbox, enqueue=Queue()), b"\r".join(segs))
    assert ack_code(ack) == "AE"
    assert "OBX" in _err(ack)


def test_database_down_gives_ae_never_aa(sample: Sample) -> None:
    down = Inbox(make_engine("postgresql://nobody@127.0.0.1:1/none"))
    q = Queue()
    ack = _receive(IngestService(inbox=down, enqueue=q), _msg(sample))
    assert ack_code(ack) == "AE"
    assert q.items == []


def test_broker_down_after_commit_still_acks_and_keeps_the_item(
    inbox: Inbox, sample: Sample
) -> None:
    ack = _receive(IngestService(inbox=inbox, enqueue=Queue(fail=True)), _msg(sample))
    assert ack_code(ack) == "AA"
    assert len(inbox.unfinished()) == 1


@pytest.mark.parametrize(
    ("msh15", "bad", "expected"),
    [
        ("AL", False, "CA"),
        ("AL", True, "CR"),
        ("ER", False, None),
        ("ER", True, "CR"),
        ("SU", False, "CA"),
        ("SU", True, None),
        ("NE", False, None),
        ("NE", True, None),
    ],
)
def test_enhanced_mode_commit_acks_follow_msh15(
    inbox: Inbox, sample: Sample, msh15: str, bad: bool, expected: str | None
) -> None:
    segs = _msg(sample, control_id=f"E{msh15}{bad}").split(b"\r")
    fields = segs[0].split(b"|")
    fields += [b""] * (17 - len(fields))
    fields[14], fields[15] = msh15.encode(), b"AL"
    if bad:
        fields[8] = b"ADT^A01"
    segs[0] = b"|".join(fields)
    ack = IngestService(inbox=inbox, enqueue=Queue()).receive_hl7(b"\r".join(segs))
    assert (None if ack is None else ack_code(ack)) == expected


class BrokenAudit:
    """An audit log that cannot append (database full)."""

    def append(self, event: object) -> int:
        from integration.audit import AuditStoreError

        raise AuditStoreError("disk full")


def test_every_received_message_and_ack_is_audited(inbox: Inbox, sample: Sample) -> None:
    from integration.audit import AuditLog, EventKind, SearchQuery

    audit = AuditLog.in_memory()
    svc = IngestService(inbox=inbox, enqueue=Queue(), audit=audit)
    _receive(svc, _msg(sample, control_id="AUD1"))
    _receive(svc, b"MSH|^~\\&|X|WARD|Y|Z|20260101||ADT^A01|AUD2|P|2.5.1\rPID|1")
    events = audit.search(SearchQuery(newest_first=False))
    kinds = [(e.kind, e.message_id, e.outcome.value) for e in events]
    assert kinds == [
        (EventKind.MESSAGE_RECEIVED, "AUD1", "0"),
        (EventKind.ACK_SENT, "AUD1", "0"),
        (EventKind.MESSAGE_RECEIVED, "AUD2", "4"),
        (EventKind.ACK_SENT, "AUD2", "4"),
    ]
    item = inbox.find_by_key("hl7:WARD|AUD1")
    assert item is not None and events[1].ecg_id == item.id
    assert sample.record.patient is not None
    assert audit.patient(events[0]) is not None
    assert audit.verify().ok


def test_audit_log_down_means_ae_and_nothing_stored(inbox: Inbox, sample: Sample) -> None:
    q = Queue()
    ack = _receive(IngestService(inbox=inbox, enqueue=q, audit=BrokenAudit()), _msg(sample))
    assert ack_code(ack) == "AE"
    assert inbox.count_by_status() == {} and q.items == []
