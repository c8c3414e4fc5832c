"""Issue 6 item 4, done when: a stream whose subgroup mix shifts, replayed through real
audit-log appends (SQLite and the PostgreSQL server) and polled as `serve` polls, alerts for
exactly the groups that shifted, once each; `ecgbridge fairness report` (a subprocess) reads
the same numbers back from that log.

The streams are deterministic: cells (sex x age band) take turns in a fixed pattern, and
within a cell the positives are spread evenly (the k-th ECG of a cell with rate r is positive
when round((k+1) r) > round(k r)), so every window's rate is its cells' rate to within 1/n and
the expected alerts follow from the rates alone, with no random flakiness.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from inference.fairness import CELLS
from integration.audit import AuditEvent, AuditLog, EventKind, SearchQuery
from integration.audit.config import AuditSettings
from integration.fairness_monitor import DriftConfig, FairnessMonitor, groups_of
from tests.support.processes import ecgbridge_env, run_cli

pytestmark = pytest.mark.e2e

MODEL = "replay-model-1"
CFG = DriftConfig(window=60, min_n=30, bound=0.10)
PHASE = 360  # 60 ECGs per cell at an even mix: every window is replaced within a phase
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
POLL_EVERY = 45  # appends between polls, as `serve` polls while workers append


@dataclass(frozen=True)
class Ecg:
    ecg_id: str
    sex: str
    band: str
    positive: bool


class Stream:
    """Deterministic ECGs: ``mix`` cells in turn, each with its positive rate in percent."""

    def __init__(self) -> None:
        self.k: dict[tuple[str, str], int] = dict.fromkeys(CELLS, 0)
        self.n = 0

    def take(
        self, n: int, *, rate_pct: Mapping[tuple[str, str], int], mix: Sequence[tuple[str, str]]
    ) -> list[Ecg]:
        out = []
        for i in range(n):
            cell = mix[i % len(mix)]
            k, r = self.k[cell], rate_pct[cell]
            self.k[cell] += 1
            out.append(
                Ecg(f"ecg-{self.n:05d}", *cell, ((k + 1) * r + 50) // 100 > (k * r + 50) // 100)
            )
            self.n += 1
        return out


def reference(rate_pct: Mapping[tuple[str, str], int]) -> dict[str, float]:
    """Each group's rate at an even mix of its cells (what fold 9 gives in production)."""
    out: dict[str, float] = {}
    for group in {g for s, b in CELLS for g in groups_of(s, b)}:
        cells = [c for c in CELLS if group in groups_of(*c)]
        out[group] = sum(rate_pct[c] for c in cells) / len(cells) / 100
    return out


@pytest.fixture
def audit(audit_url: str, tmp_path: Path) -> Iterator[AuditLog]:
    """The log as `serve` and the CLI open it (development keys under the data dir)."""
    settings = AuditSettings(
        data_dir=tmp_path, database_url=audit_url, audit_pg_synchronous_commit=False
    )
    log = AuditLog.from_settings(settings)
    yield log
    log.close()


class Replay:
    """Appends a stream's entries one by one, polling the monitor every few appends."""

    def __init__(self, audit: AuditLog, monitor: FairnessMonitor) -> None:
        self.audit = audit
        self.monitor = monitor
        self.appended = 0
        self.alerts: list[str] = []

    def append(self, event: AuditEvent) -> None:
        self.audit.append(event)
        self.appended += 1
        if self.appended % POLL_EVERY == 0:
            self.alerts += [a.group for a in self.monitor.poll()]

    def play(self, ecgs: Sequence[Ecg], *, feedback: bool = False) -> None:
        for e in ecgs:
            at = BASE + timedelta(seconds=int(e.ecg_id[4:]))
            self.append(
                AuditEvent(
                    kind=EventKind.ANALYSIS_FINISHED,
                    actor="worker",
                    recorded_at=at,
                    ecg_id=e.ecg_id,
                    model_version=MODEL,
                    finding="triage-positive" if e.positive else "triage-negative",
                    detail={"sex": e.sex, "age_band": e.band, "probability": 0.5},
                )
            )
            if feedback and (e.sex, e.band) == ("female", ">65"):
                self._feedback(e, at)
        self.alerts += [a.group for a in self.monitor.poll()]

    def _feedback(self, e: Ecg, at: datetime) -> None:
        """Every female/>65 card gets feedback: positive accepted (true positive), negative
        overridden as "disagree" (false negative); every other one taken by a replica that
        did not issue the card (no ecg_id: tied through cds.card.shown)."""
        card = f"card-{e.ecg_id}"
        finding = "triage-positive" if e.positive else "triage-negative"
        self.append(
            AuditEvent(
                kind=EventKind.CDS_CARD_SHOWN,
                actor="cds:ecg-triage-patient-view",
                recorded_at=at,
                ecg_id=e.ecg_id,
                model_version=MODEL,
                finding=finding,
                detail={"card": card},
            )
        )
        known = int(e.ecg_id[4:]) % 2 == 0
        detail: dict[str, str | bool] = {"card": card, "card_known": known}
        if not e.positive:
            detail["override_reason"] = "disagree"
        self.append(
            AuditEvent(
                kind=EventKind.CDS_FEEDBACK,
                actor="cds:ecg-triage-patient-view",
                recorded_at=at,
                ecg_id=e.ecg_id if known else None,
                model_version=MODEL if known else None,
                finding=finding if known else None,
                override=not e.positive,
                detail=detail,
            )
        )


def drift_entries(audit: AuditLog) -> list[str]:
    found = audit.search(SearchQuery(kinds=(EventKind.FAIRNESS_DRIFT.value,), limit=1000))
    return sorted(str(e.detail["group"]) for e in found)


RATE_SHIFT_BEFORE = dict.fromkeys(CELLS, 20)
RATE_SHIFT_AFTER = {c: 50 if c[0] == "female" else 20 for c in CELLS}
#: Women's positive rate 0.2 -> 0.5: every group with women in it moves (the mixed ones to
#: 0.35); men's groups stay at 0.2.
RATE_SHIFT_ALERTS = sorted(
    ["all", "female", "<40", "40-65", ">65", "female/<40", "female/40-65", "female/>65"]
)


def test_rate_shift_replay_then_report(audit: AuditLog, audit_url: str, tmp_path: Path) -> None:
    ref = reference(RATE_SHIFT_BEFORE)
    monitor = FairnessMonitor(audit, reference=ref, config=CFG, model_version=MODEL)
    replay, stream = Replay(audit, monitor), Stream()
    before = stream.take(PHASE, rate_pct=RATE_SHIFT_BEFORE, mix=CELLS)
    replay.play(before)
    assert replay.alerts == [] and drift_entries(audit) == []

    after = stream.take(PHASE, rate_pct=RATE_SHIFT_AFTER, mix=CELLS)
    replay.play(after, feedback=True)
    assert sorted(replay.alerts) == RATE_SHIFT_ALERTS  # exactly these, once each
    assert drift_entries(audit) == RATE_SHIFT_ALERTS
    assert monitor.poll() == []
    summary = {g.group: g for g in monitor.summary()}
    assert summary["female"].window_rate == pytest.approx(0.5, abs=1 / 60)
    assert summary["male"].window_rate == pytest.approx(0.2, abs=1 / 60)
    assert {g for g, s in summary.items() if s.drifting} == set(RATE_SHIFT_ALERTS)

    # a restarted serve (or a second replica) recomputes the same and writes nothing new
    again = FairnessMonitor(audit, reference=ref, config=CFG, model_version=MODEL)
    assert again.poll() == [] and again.summary() == monitor.summary()
    assert drift_entries(audit) == RATE_SHIFT_ALERTS
    assert audit.verify().ok

    # the report, as an operator runs it
    ref_file = tmp_path / "reference.json"
    ref_file.write_text(json.dumps(ref))
    env = ecgbridge_env(
        data_dir=str(tmp_path),
        database_url=audit_url,
        fairness_window=str(CFG.window),
        fairness_min_n=str(CFG.min_n),
        fairness_drift_bound=str(CFG.bound),
    )
    base = ["fairness", "report", "--model-version", MODEL, "--reference", str(ref_file)]

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*base, *args, env=env)

    phase2_start = BASE + timedelta(seconds=PHASE)
    done = report("--since", phase2_start.isoformat(), "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    groups = {g["group"]: g for g in body["groups"]}
    for group in {g for c in CELLS for g in groups_of(*c)}:
        mine = [e for e in after if group in groups_of(e.sex, e.band)]
        assert groups[group]["analysed"] == len(mine), group
        assert groups[group]["positive"] == sum(e.positive for e in mine), group
        assert groups[group]["reference_rate"] == pytest.approx(ref[group])
        assert groups[group]["drift"] is (group in RATE_SHIFT_ALERTS), group
    assert groups["female"]["positive_rate"] == pytest.approx(0.5, abs=0.01)
    assert sorted(a["group"] for a in body["alerts"]) == RATE_SHIFT_ALERTS
    fb = [e for e in after if (e.sex, e.band) == ("female", ">65")]
    tp, fn = sum(e.positive for e in fb), sum(not e.positive for e in fb)
    assert (tp, fn) == (30, 30)  # 60 cards at 0.5
    old = groups["female/>65"]
    assert (old["true_positive"], old["false_negative"], old["overrides"]) == (tp, fn, fn)
    assert old["sensitivity"] == 0.5 and old["sensitivity_n"] == 60
    assert groups["male"]["overrides"] == 0 and groups["male"]["sensitivity"] is None
    assert groups["all"]["overrides"] == fn and groups["female"]["sensitivity_n"] == 60

    whole = report("--since", "2d", "--json")
    assert whole.returncode == 0, whole.stderr
    assert {g["group"]: g for g in json.loads(whole.stdout)["groups"]}["all"]["analysed"] == 720

    text = report()
    assert text.returncode == 0 and "female/>65" in text.stdout
    assert "drift alerts in the period: 8" in text.stdout

    bad = report("--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr


MIX_RATES = {c: 40 if c[1] == ">65" else 15 for c in CELLS}
#: 18 of 22 ECGs now over 65: the age bands and cells keep their rates, but every group
#: that pools age bands (all, male, female) goes from 0.233 to 0.355.
MIX_AFTER: tuple[tuple[str, str], ...] = (("male", ">65"), ("female", ">65")) * 9 + (
    ("male", "<40"),
    ("female", "<40"),
    ("male", "40-65"),
    ("female", "40-65"),
)


def test_mix_shift_replay(audit: AuditLog) -> None:
    ref = reference(MIX_RATES)
    monitor = FairnessMonitor(audit, reference=ref, config=CFG, model_version=MODEL)
    replay, stream = Replay(audit, monitor), Stream()
    replay.play(stream.take(PHASE, rate_pct=MIX_RATES, mix=CELLS))
    assert replay.alerts == [] and drift_entries(audit) == []
    after = stream.take(PHASE, rate_pct=MIX_RATES, mix=MIX_AFTER)
    replay.play(after)
    assert sorted(replay.alerts) == ["all", "female", "male"]
    assert drift_entries(audit) == ["all", "female", "male"]
    summary = {g.group: g for g in monitor.summary()}
    assert summary[">65"].window_rate == pytest.approx(0.4, abs=1 / 60)
    last = after[-CFG.window :]
    assert summary["all"].window_rate == sum(e.positive for e in last) / CFG.window
    assert {g for g, s in summary.items() if s.drifting} == {"all", "female", "male"}
