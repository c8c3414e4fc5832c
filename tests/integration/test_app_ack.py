"""Enhanced-mode application ACKs (`integration.app_ack`): the message itself, when MSH-16
asks for it, the endpoint setting, and `AppAcker` on a real SQLite inbox, a real (in-memory)
audit log and a real MLLP peer process. The whole path through listener, Redis and a Celery
worker is in tests/e2e/test_app_ack.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from integration.app_ack import (
    AppAcker,
    ProcessingError,
    app_ack_control_id,
    app_ack_wanted,
    build_app_ack,
    may_want_app_ack,
    parse_endpoints,
)
from integration.audit import AuditLog, EventKind, Outcome, SearchQuery
from integration.celery_app import APP_ACK_TASK, EXPLAIN_QUEUE, QUEUE, enqueue_app_ack
from integration.inbox import ContentType, Inbox, InboxItem
from integration.settings import Settings
from mappers.hl7v2 import build_ack, parse_msh
from tests.support.v2_peer import V2Peer

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def message(control_id: str, *, accept: str = "AL", app: str = "AL") -> bytes:
    return (
        "MSH|^~\\&|ECGCART^1.2.3^ISO|WARD|ECGBRIDGE||20261121120000||ORU^R01|"
        f"{control_id}|P|2.5.1|||{accept}|{app}\rPID|1"
    ).encode()


def fields(ack: bytes, name: str) -> list[str]:
    seg = next(s for s in ack.decode().split("\r") if s.startswith(name + "|"))
    return seg.split("|")


def test_app_ack_message_answers_the_inbound_and_asks_for_no_ack() -> None:
    msh = parse_msh(message("M1"))
    ack = build_app_ack(msh, "AA", control_id="AP1", now=NOW, text="ECG report written")
    head = fields(ack, "MSH")
    assert head[8].startswith("ACK") and head[9] == "AP1"
    assert head[14:16] == ["NE", "NE"]
    assert head[4:6] == ["ECGCART^1.2.3^ISO", "WARD"]
    assert fields(ack, "MSA")[1:3] == ["AA", "M1"]
    assert parse_msh(ack).accept_ack_type == "NE"  # parses as a well-formed header


def test_app_ack_ae_carries_err_and_rejects_commit_codes() -> None:
    msh = parse_msh(message("M2"))
    ack = build_app_ack(msh, "AE", control_id="AP2", now=NOW, error=ProcessingError("gave up"))
    assert fields(ack, "MSA")[1] == "AE"
    assert fields(ack, "ERR")[3].startswith("207^")
    with pytest.raises(ValueError, match="AA, AE or AR"):
        build_app_ack(msh, "CA", control_id="AP3", now=NOW)


@pytest.mark.parametrize(
    ("accept", "app", "code", "wanted"),
    [
        ("AL", "AL", "AA", True),
        ("AL", "AL", "AE", True),
        ("AL", "ER", "AA", False),
        ("AL", "ER", "AE", True),
        ("AL", "ER", "AR", True),
        ("AL", "SU", "AA", True),
        ("AL", "SU", "AE", False),
        ("NE", "NE", "AA", False),
        ("AL", "", "AA", False),
        ("", "AL", "AA", False),  # original mode: the listener's AA was the application ACK
    ],
)
def test_msh16_decides(accept: str, app: str, code: str, wanted: bool) -> None:
    assert app_ack_wanted(parse_msh(message("M", accept=accept, app=app)), code) is wanted


def test_endpoint_setting_parses_and_refuses_bad_entries() -> None:
    assert parse_endpoints(" ECGCART^WARD=10.0.0.5:2576, *=engine:2577 ") == {
        "ECGCART^WARD": ("10.0.0.5", 2576),
        "*": ("engine", 2577),
    }
    with pytest.raises(ValidationError, match="'ECGCART\\^WARD=engine' is not SENDER=host:port"):
        Settings(app_ack_endpoints="ECGCART^WARD=engine")
    with pytest.raises(ValueError, match="port out of range"):
        parse_endpoints("X^Y=h:70000")


def test_control_id_is_stable_and_fits_msh10() -> None:
    assert app_ack_control_id("item-1") == app_ack_control_id("item-1")
    assert app_ack_control_id("item-1") != app_ack_control_id("item-2")
    assert len(app_ack_control_id("item-1")) == 20


# -- AppAcker on real parts --------------------------------------------------------------


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    return Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[V2Peer]:
    with V2Peer(tmp_path / "peer") as p:
        yield p


def finished(inbox: Inbox, control_id: str, *, dead: bool = False, **msh: str) -> str:
    item = inbox.accept(
        idem_key=f"hl7:WARD|{control_id}",
        channel="mllp",
        content_type=ContentType.HL7V2,
        payload=message(control_id, **msh),
        record_id=control_id,
    ).item
    if dead:
        inbox.mark_dead_letter(item.id, reason="after 3 attempts: RuntimeError: poison")
    else:
        inbox.mark_done(item.id, result_json="{}", report_ref="DiagnosticReport/x")
    return item.id


def events(audit: AuditLog, kind: EventKind) -> list[tuple[str | None, Outcome]]:
    found = audit.search(SearchQuery(kinds=(kind.value,), newest_first=False))
    return [(e.message_id, e.outcome) for e in found]


def test_acker_sends_once_per_item_and_audits(inbox: Inbox, peer: V2Peer) -> None:
    audit = AuditLog.in_memory()
    acker = AppAcker(endpoints={"ECGCART^WARD": ("127.0.0.1", peer.port)}, audit=audit)
    ok = finished(inbox, "OK1")
    dead = finished(inbox, "DEAD1", dead=True)
    for item_id in (ok, ok, dead, dead):  # a task redelivered after a crash runs again
        acker.after_processing(item_id, inbox=inbox)
    got = [(parse_msh(r["message"].encode()), r["message"]) for r in peer.received()]
    assert [fields(m.encode(), "MSA")[1:3] for _, m in got] == [["AA", "OK1"], ["AE", "DEAD1"]]
    assert [h.control_id for h, _ in got] == [app_ack_control_id(ok), app_ack_control_id(dead)]
    assert "poison" in fields(got[1][1].encode(), "ERR")[8]
    assert events(audit, EventKind.APP_ACK_SENT) == [
        ("OK1", Outcome.SUCCESS),
        ("DEAD1", Outcome.SUCCESS),
    ]


def test_acker_sends_nothing_unless_asked_or_finished(inbox: Inbox, peer: V2Peer) -> None:
    acker = AppAcker(endpoints={"*": ("127.0.0.1", peer.port)}, audit=AuditLog.in_memory())
    for item_id in (
        finished(inbox, "ER1", app="ER"),  # done, and ER wants errors only
        finished(inbox, "ORIG1", accept="", app=""),  # original mode
    ):
        acker.after_processing(item_id, inbox=inbox)
    pending = inbox.accept(
        idem_key="hl7:WARD|PEND1",
        channel="mllp",
        content_type=ContentType.HL7V2,
        payload=message("PEND1"),
        record_id="PEND1",
    ).item
    acker.after_processing(pending.id, inbox=inbox)  # accepted, not processed yet
    acker.after_processing("no-such-item", inbox=inbox)
    assert peer.received() == []
    acker.after_processing(finished(inbox, "ER2", app="ER", dead=True), inbox=inbox)
    [got] = peer.received()
    assert got["message"].split("\r")[1].startswith("MSA|AE|ER2")


def test_no_endpoint_is_logged_once_and_audited_per_item(
    inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog.in_memory()
    acker = AppAcker(endpoints={"OTHER^FAC": ("127.0.0.1", 9)}, audit=audit)
    with caplog.at_level(logging.INFO, logger="integration.app_ack"):
        for control_id in ("S1", "S2"):
            acker.after_processing(finished(inbox, control_id), inbox=inbox)
    skipped = [r for r in caplog.records if "no application-ACK endpoint" in r.getMessage()]
    assert len(skipped) == 1 and "ECGCART^WARD" in skipped[0].getMessage()
    assert events(audit, EventKind.APP_ACK_SKIPPED) == [
        ("S1", Outcome.SUCCESS),
        ("S2", Outcome.SUCCESS),
    ]
    assert events(audit, EventKind.APP_ACK_SENT) == []


def test_unreachable_endpoint_is_audited_as_failed_and_retried_later(
    inbox: Inbox, tmp_path: Path
) -> None:
    audit = AuditLog.in_memory()
    peer = V2Peer(tmp_path / "late-peer")  # its port is chosen; nothing listens there yet
    acker = AppAcker(
        endpoints={"*": ("127.0.0.1", peer.port)},
        audit=audit,
        timeout_s=2,
        attempts=2,
        backoff_s=0.01,
    )
    item_id = finished(inbox, "DOWN1")
    assert acker.after_processing(item_id, inbox=inbox) == "failed"  # never raises
    assert events(audit, EventKind.APP_ACK_SENT) == [("DOWN1", Outcome.SERIOUS_FAILURE)]
    # not sent, so the task's retry tries again, now that it listens; then never again
    with peer:
        assert acker.after_processing(item_id, inbox=inbox) == "sent"
        assert acker.after_processing(item_id, inbox=inbox) == "sent"
        assert [r["control_id"] for r in peer.received()] == [app_ack_control_id(item_id)]
    assert events(audit, EventKind.APP_ACK_SENT)[-1] == ("DOWN1", Outcome.SUCCESS)


def test_original_mode_items_are_decided_without_reading_the_message(
    inbox: Inbox, peer: V2Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most senders use original mode: the stored AA says so, and the worker's hook then
    neither reads nor decrypts the (often 250 kB) message. Enhanced mode still reads it."""
    acker = AppAcker(endpoints={"*": ("127.0.0.1", peer.port)}, audit=AuditLog.in_memory())
    original = finished(inbox, "ORIG2", accept="", app="")
    ack = build_ack(parse_msh(message("ORIG2", accept="", app="")), "AA", control_id="A1", now=NOW)
    inbox.set_ack(original, ack)
    enhanced = finished(inbox, "ENH2")
    inbox.set_ack(enhanced, build_ack(parse_msh(message("ENH2")), "CA", control_id="A2", now=NOW))
    reads: list[str] = []
    real_get = inbox.get

    def counting_get(item_id: str) -> InboxItem | None:
        reads.append(item_id)
        return real_get(item_id)

    monkeypatch.setattr(inbox, "get", counting_get)
    for item_id in (original, enhanced):
        acker.after_processing(item_id, inbox=inbox)
    assert reads == [enhanced]
    [got] = peer.received()
    assert got["message"].split("\r")[1].startswith("MSA|AA|ENH2")


class _Sent:
    """A stand-in Celery app that records what would be queued (unit test of the routing;
    the e2e test sends through a real worker)."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, list[str], str, int]] = []

    def send_task(self, name: str, *, args: list[str], queue: str, priority: int) -> None:
        self.tasks.append((name, args, queue, priority))


def test_the_ack_task_goes_last_on_the_slow_lane_when_there_is_one() -> None:
    app = _Sent()
    enqueue_app_ack(app, "i1", slow_lane=True)
    enqueue_app_ack(app, "i2", slow_lane=False)
    assert app.tasks == [
        (APP_ACK_TASK, ["i1"], EXPLAIN_QUEUE, 9),
        (APP_ACK_TASK, ["i2"], QUEUE, 9),
    ]


def test_may_want_app_ack_reads_only_the_stored_answer(inbox: Inbox) -> None:
    original = finished(inbox, "ORIG3", accept="", app="")
    ack = build_ack(parse_msh(message("ORIG3", accept="", app="")), "AA", control_id="A3", now=NOW)
    inbox.set_ack(original, ack)
    enhanced = finished(inbox, "ENH3")
    inbox.set_ack(enhanced, build_ack(parse_msh(message("ENH3")), "CA", control_id="A4", now=NOW))
    assert not may_want_app_ack(inbox, original)
    assert may_want_app_ack(inbox, enhanced)
    assert not may_want_app_ack(inbox, "no-such-item")
