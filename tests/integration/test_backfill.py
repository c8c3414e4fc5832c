"""Backfill through the real intake: SQLite inbox, in-memory enqueue twin, HL7 files built
from the PTB-XL samples; interrupted and resumed, each file is accepted and queued once."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from integration.backfill import BACKFILL_PRIORITY, BackfillSummary, backfill
from integration.errors import InputFileError
from integration.inbox import Inbox
from integration.ingest import IngestService
from integration.samples import load_samples
from integration.settings import Settings
from mappers.hl7v2_oru_out import build_oru_r01

N_FILES = 6


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archive")
    samples = load_samples()
    now = datetime(2016, 3, 1, 12, 0, tzinfo=UTC)
    for i in range(N_FILES):
        record = samples[i % len(samples)].record
        msg = build_oru_r01(record, control_id=f"ARCH{i:05d}", now=now)
        sub = folder / f"{2016 + i % 2}"
        sub.mkdir(exist_ok=True)
        # Archives store segments one per line (LF), as most interface engines write them.
        (sub / f"ecg-{i:03d}.hl7").write_bytes(msg.replace(b"\r", b"\n"))
    (folder / "2016" / "notes.md").write_text("not an ECG")  # ignored companion file
    (folder / "2017" / "broken.hl7").write_bytes(b"MSH|^~\\&|X|Y|||20160101||ORU^R01|B1|P|2.5.1\n")
    return folder


class Twin:
    """The in-memory queue: records each (item id, priority) sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def __call__(self, item_id: str, priority: int) -> None:
        self.sent.append((item_id, max(priority, BACKFILL_PRIORITY)))


class Interrupt:
    """A rate-limiter sleep that raises KeyboardInterrupt on its n-th call."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.calls = 0

    def __call__(self, seconds: float) -> None:
        assert seconds > 0
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt


def test_interrupted_then_resumed_accepts_each_file_once(archive: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    inbox = Inbox.from_url(f"sqlite:///{tmp_path / 'inbox.sqlite3'}")
    twin = Twin()
    intake = IngestService(inbox=inbox, enqueue=twin)
    state = tmp_path / "state.done"
    stopped = Interrupt(at=3)
    with pytest.raises(KeyboardInterrupt):
        backfill(
            settings,
            archive,
            rate_per_s=1000.0,
            state_file=state,
            intake=intake,
            sleep=stopped,
            clock=lambda: 0.0,  # time stands still: every send after the first must wait
        )
    first = len(twin.sent)
    assert 0 < first < N_FILES
    assert len(state.read_text().splitlines()) == first

    err = io.StringIO()
    summary = backfill(
        settings,
        archive,
        rate_per_s=1000.0,
        state_file=state,
        progress=err,
        intake=intake,
        sleep=Interrupt(at=None),
        clock=lambda: 0.0,
    )
    assert isinstance(summary, BackfillSummary)
    assert summary.files == N_FILES + 1  # + broken.hl7; notes.md is not an ECG file
    assert summary.already_done == first
    assert summary.accepted == N_FILES - first
    assert summary.refused == 1 and summary.failed == 0
    assert summary.problems[0][0] == "2017/broken.hl7"
    assert summary.complete
    # Each ECG committed once, queued once, at the backfill priority.
    ids = [item_id for item_id, _ in twin.sent]
    assert len(ids) == len(set(ids)) == N_FILES
    assert {p for _, p in twin.sent} == {BACKFILL_PRIORITY}
    assert inbox.count_by_status() == {"accepted": N_FILES}
    assert "backfill [" in err.getvalue() and f"{N_FILES + 1}/{N_FILES + 1}" in err.getvalue()
    assert "1 refused" in summary.text()

    # A third run finds everything done and sends nothing.
    again = backfill(settings, archive, state_file=state, intake=intake, sleep=Interrupt(None))
    assert again.already_done == N_FILES + 1 and again.accepted == 0
    assert len(twin.sent) == N_FILES
    inbox.dispose()


def test_lost_state_replays_without_second_analysis(archive: Path, tmp_path: Path) -> None:
    """A state file lost after commit: the replay gets the stored ACK, nothing is queued."""
    inbox = Inbox.from_url(f"sqlite:///{tmp_path / 'inbox.sqlite3'}")
    twin = Twin()
    intake = IngestService(inbox=inbox, enqueue=twin)
    settings = Settings(data_dir=tmp_path / "var")
    for run in range(2):
        summary = backfill(
            settings,
            archive,
            rate_per_s=1e6,
            state_file=tmp_path / f"state-{run}.done",
            intake=intake,
            sleep=Interrupt(None),
        )
        assert summary.accepted == N_FILES
    assert len(twin.sent) == N_FILES
    inbox.dispose()


def test_fhir_json_goes_through_receive_fhir(tmp_path: Path) -> None:
    from mappers.fhir_ecg_out import record_to_observation

    record = load_samples()[0].record
    folder = tmp_path / "fhir"
    folder.mkdir()
    (folder / "obs.json").write_text(json.dumps(record_to_observation(record)))
    inbox = Inbox.from_url(f"sqlite:///{tmp_path / 'inbox.sqlite3'}")
    twin = Twin()
    summary = backfill(
        Settings(data_dir=tmp_path / "var"),
        folder,
        state_file=tmp_path / "s.done",
        intake=IngestService(inbox=inbox, enqueue=twin),
    )
    assert summary.accepted == 1 and len(twin.sent) == 1
    inbox.dispose()


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InputFileError):
        backfill(Settings(data_dir=tmp_path), tmp_path / "missing", intake=None)
