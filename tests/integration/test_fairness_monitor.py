"""Fairness monitor: subgroup fields in the audit entry, counting, drift excursions,
feedback attribution and sensitivity, the incremental poll, metrics and the report CLI
(in process; the subprocess and the serve process are in tests/e2e/test_fairness_*.py)."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.fairness import GROUPS
from inference.record import Demographics, EcgRecord, PatientRef, Sex
from inference.result import AnalysisResult, FairnessCheck, QualityReport, TriageResult
from integration import auditing
from integration.audit import AuditEvent, AuditLog, EventKind, SearchQuery, StoredEvent
from integration.audit.export import to_fhir
from integration.fairness_monitor import (
    DriftAlert,
    DriftConfig,
    FairnessCounts,
    FairnessMonitor,
    groups_of,
    outcome_evidence,
    wilson_ci95,
)
from integration.fairness_report import cli_main, parse_when
from integration.metrics import Metrics
from integration.settings import Settings

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
MODEL = "test-model-1"


# -- event builders ------------------------------------------------------------------------


def analysis(
    ecg_id: str | None,
    *,
    sex: str | None = "female",
    band: str | None = "<40",
    positive: bool | None = True,
    model: str = MODEL,
    at: datetime = T0,
) -> AuditEvent:
    """An ``analysis.finished`` entry as `integration.auditing.analysis_finished` writes it
    (test_audit_entry_carries_the_subgroup checks the two agree)."""
    finding = (
        "not-analysed" if positive is None else "triage-positive" if positive else "triage-negative"
    )
    return AuditEvent(
        kind=EventKind.ANALYSIS_FINISHED,
        actor="worker",
        recorded_at=at,
        ecg_id=ecg_id,
        model_version=model,
        finding=finding,
        detail={"sex": sex, "age_band": band, "probability": 0.5, "threshold": 0.5},
    )


def card_shown(ecg_id: str, card: str, *, finding: str = "triage-positive") -> AuditEvent:
    return AuditEvent(
        kind=EventKind.CDS_CARD_SHOWN,
        actor="cds:ecg-triage-patient-view",
        ecg_id=ecg_id,
        model_version=MODEL,
        finding=finding,
        detail={"card": card},
    )


def feedback(
    ecg_id: str | None,
    *,
    override: bool,
    reason: str | None = None,
    card: str = "card-x",
    finding: str | None = "triage-positive",
    at: datetime = T0,
) -> AuditEvent:
    detail: dict[str, str | bool | None] = {
        "card": card,
        "outcome": "overridden" if override else "accepted",
        "card_known": ecg_id is not None,
    }
    if reason is not None:
        detail["override_reason"] = reason
    return AuditEvent(
        kind=EventKind.CDS_FEEDBACK,
        actor="cds:ecg-triage-patient-view",
        recorded_at=at,
        ecg_id=ecg_id,
        model_version=MODEL if ecg_id is not None else None,
        finding=finding if ecg_id is not None else None,
        override=override,
        detail=detail,
    )


def stored(event: AuditEvent, index: int) -> StoredEvent:
    return StoredEvent(
        index=index,
        kind=event.kind,
        actor=event.actor,
        outcome=event.outcome,
        recorded_at=event.recorded_at,
        patient_key=None,
        phi_token=None,
        ecg_id=event.ecg_id,
        message_id=None,
        resource=None,
        model_version=event.model_version,
        finding=event.finding,
        override=event.override,
        detail=dict(event.detail),
        leaf_hash=b"",
    )


class Feed:
    """A `FairnessCounts` fed events with consecutive indexes."""

    def __init__(self, counts: FairnessCounts) -> None:
        self.counts = counts
        self.index = 0
        self.alerts: list[DriftAlert] = []

    def __call__(self, *events: AuditEvent) -> list[DriftAlert]:
        new: list[DriftAlert] = []
        for ev in events:
            new += self.counts.observe(stored(ev, self.index))
            self.index += 1
        self.alerts += new
        return new

    def group(self, name: str) -> Any:
        return next(g for g in self.counts.summary() if g.group == name)


def counts(**kw: Any) -> Feed:
    kw.setdefault("reference", {"all": 0.2, "female": 0.2, "female/<40": 0.2, "<40": 0.2})
    kw.setdefault("config", DriftConfig(window=10, min_n=5, bound=0.2))
    return Feed(FairnessCounts(model_version=MODEL, **kw))


# -- the audit entry -------------------------------------------------------------------------


def _record(demographics: Demographics) -> EcgRecord:
    return EcgRecord(
        signals_mv=np.zeros((12, 5000), dtype=np.float32),
        lead_names=("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"),
        fs_hz=500.0,
        record_id="r1",
        patient=PatientRef(value="MRN-1", system="urn:oid:1"),
        demographics=demographics,
    )


def _fairness_check() -> FairnessCheck:
    return FairnessCheck(
        adjusted_probability=0.61234567,
        own_probability=0.7,
        by_demographic={"male": 0.62},
        max_shift=0.12,
        max_shift_demographic="male",
        shift_threshold=0.10,
        verdict="demographic-sensitive",
        flips_decision=False,
        sex="female",
        age_band=">65",
        method="backdoor",
    )


def test_audit_entry_carries_the_subgroup_and_the_fairness_check() -> None:
    result = AnalysisResult(
        record_id="r1",
        model_version=MODEL,
        quality=QualityReport(ok=True),
        triage=TriageResult(probability=0.8, threshold=0.5),
        fairness=_fairness_check(),
    )
    ev = auditing.analysis_finished(
        ecg_id="e1", record=_record(Demographics(age_years=93, sex=Sex.FEMALE)), result=result
    )
    assert ev.detail["sex"] == "female"
    assert ev.detail["age_band"] == ">65"  # over 89: pooled, as Safe Harbor requires
    assert ev.detail["fairness_verdict"] == "demographic-sensitive"
    assert ev.detail["adjusted_probability"] == 0.612346
    assert ev.detail["probability"] == 0.8 and ev.detail["quality"] == "ok"  # kept
    assert "93" not in json.dumps(dict(ev.detail))  # no exact age
    feed = counts()
    feed(ev)
    assert feed.group("female/>65").positive == 1
    assert feed.group(">65").analysed == 1 and feed.group("male").analysed == 0

    plain = AnalysisResult("r2", MODEL, QualityReport(ok=True), TriageResult(0.1, 0.5))
    ev2 = auditing.analysis_finished(ecg_id="e2", record=_record(Demographics()), result=plain)
    assert ev2.detail["sex"] is None and ev2.detail["age_band"] is None
    assert "fairness_verdict" not in ev2.detail
    feed(ev2)
    assert feed.group("all").analysed == 2 and feed.group("all").positive == 1


def test_groups_and_outcome_rules() -> None:
    assert groups_of("female", "<40") == ("all", "female", "<40", "female/<40")
    assert groups_of("unknown", ">65") == ("all", ">65")
    assert groups_of(None, None) == ("all",)
    assert set(GROUPS) >= {g for s in ("male", "female") for g in groups_of(s, "40-65")}
    assert outcome_evidence(positive=True, overridden=False, reason=None) == "tp"
    assert outcome_evidence(positive=False, overridden=True, reason="disagree") == "fn"
    assert outcome_evidence(positive=True, overridden=True, reason="disagree") == "fp"
    assert outcome_evidence(positive=False, overridden=False, reason=None) == "tn"
    for reason in ("already-managed", "poor-quality", "other", None):
        assert outcome_evidence(positive=False, overridden=True, reason=reason) is None
    lo, hi = wilson_ci95(3, 3) or (0.0, 0.0)
    assert hi == 1.0 and lo < 0.45  # 3 of 3 says little
    assert wilson_ci95(0, 0) is None


# -- counting ----------------------------------------------------------------------------


def test_counts_once_per_ecg_and_only_the_monitored_model() -> None:
    feed = counts()
    feed(
        analysis("e1"),
        analysis("e1"),  # a retry after a crash: the same ECG
        analysis("e2", positive=False, sex="male", band=None),
        analysis("e3", positive=None),  # refused by the quality gate
        analysis("e4", model="older-model"),
        analysis(None, sex=None, band=None),  # no ecg_id: counted, cannot be deduplicated
    )
    s = {g.group: g for g in feed.counts.summary()}
    assert (s["all"].analysed, s["all"].positive, s["all"].not_analysed) == (3, 2, 1)
    assert (s["female"].analysed, s["female/<40"].positive, s["male"].analysed) == (1, 1, 1)
    assert s["male"].positive_rate == 0.0 and s[">65"].positive_rate is None
    assert s["female"].not_analysed == 1 and s["female"].window_n == 1


def test_drift_alerts_once_per_excursion_with_hysteresis() -> None:
    feed = counts()  # window 10, min n 5, bound 0.2, reference 0.2
    ids = iter(f"e{i}" for i in range(1000))

    def run(n: int, positive: Callable[[int], bool]) -> list[DriftAlert]:
        return feed(*(analysis(next(ids), positive=positive(i)) for i in range(n)))

    def every(k: int) -> Callable[[int], bool]:
        return lambda i: i % k == 0

    # at the reference rate: nothing, however long
    assert run(40, every(5)) == []
    # all positive: the window rate climbs past 0.4 once, and alerts once per group
    alerts = run(20, every(1))
    assert sorted(a.group for a in alerts) == sorted(["all", "female", "<40", "female/<40"])
    assert all(a.window_n == 10 and a.reference_rate == 0.2 for a in alerts)
    first = next(a for a in alerts if a.group == "female")
    assert 0.4 < first.window_rate <= 0.5  # alerted as soon as it left the bound
    assert run(30, every(1)) == []  # still out: no repeat
    assert feed.group("female").drifting
    # back to 0.4: inside the bound, not within bound/2: the same excursion goes on
    assert run(30, lambda i: i % 5 < 2) == [] and feed.group("female").drifting
    assert feed.group("female").window_rate == 0.4
    run(30, every(5))  # back at 0.2: the excursion is over
    assert not feed.group("female").drifting
    again = run(10, every(1))  # a new departure alerts again
    assert sorted(a.group for a in again) == sorted(["all", "female", "<40", "female/<40"])
    assert feed.group("female").alerts == 2


def test_no_judgement_without_a_reference_or_below_min_n_or_on_the_bound() -> None:
    feed = counts(reference={"female": 0.2}, config=DriftConfig(window=10, min_n=10, bound=0.3))
    assert feed(*(analysis(f"a{i}") for i in range(9))) == []  # 9 < min n, all positive
    assert [a.group for a in feed(analysis("a9"))] == ["female"]  # not "all": no reference
    exact = counts(reference={"female": 0.2}, config=DriftConfig(window=10, min_n=10, bound=0.3))
    # 5 of 10 = 0.5: exactly on the bound, not beyond it
    assert exact(*(analysis(f"b{i}", positive=i % 2 == 0) for i in range(10))) == []
    assert exact.group("female").window_rate == 0.5


def test_downward_drift_alerts_too() -> None:
    feed = counts(reference={"<40": 0.5}, config=DriftConfig(window=20, min_n=20, bound=0.1))
    alerts = feed(*(analysis(f"e{i}", positive=False) for i in range(20)))
    assert [(a.group, a.window_rate) for a in alerts] == [("<40", 0.0)]
    assert alerts[0].to_event().detail["direction"] == "down"


def test_drift_config_and_settings() -> None:
    s = Settings()
    assert (s.fairness_window, s.fairness_min_n, s.fairness_drift_bound) == (200, 50, 0.10)
    assert s.fairness_poll_s == 30
    assert DriftConfig.from_settings(s) == DriftConfig(window=200, min_n=50, bound=0.10)
    with pytest.raises(ValueError, match="min_n"):
        DriftConfig(window=10, min_n=20)
    with pytest.raises(ValueError, match="bound"):
        DriftConfig(bound=0.0)


# -- feedback ----------------------------------------------------------------------------


def test_overrides_and_sensitivity_by_group() -> None:
    feed = counts()
    feed(
        analysis("pos-f", sex="female", band="<40", positive=True),
        analysis("neg-m", sex="male", band=">65", positive=False),
        analysis("neg-f", sex="female", band="40-65", positive=False),
        card_shown("neg-f", "card-neg-f", finding="triage-negative"),
        # accepted positive card: true positive
        feedback("pos-f", override=False),
        # negative card overridden "disagree": a missed MI, a false negative
        feedback("neg-m", override=True, reason="disagree", finding="triage-negative"),
        # override not about the outcome: an override, no evidence
        feedback("neg-m", override=True, reason="already-managed", finding="triage-negative"),
        # a later acceptance of the same negative card does not undo the miss
        feedback("neg-m", override=False, finding="triage-negative"),
        # feedback taken by a replica that did not issue the card: tied through card.shown
        feedback(None, override=True, reason="disagree", card="card-neg-f"),
        # tied to nothing: an override in "all" only
        feedback(None, override=True, reason="disagree", card="card-unknown"),
    )
    s = {g.group: g for g in feed.counts.summary()}
    assert s["all"].overrides == 4
    assert (s["male"].overrides, s["male/>65"].overrides, s["female"].overrides) == (2, 2, 1)
    assert s["female/40-65"].overrides == 1 and s["female/<40"].overrides == 0
    assert (s["all"].true_positive, s["all"].false_negative) == (1, 2)
    assert s["all"].sensitivity == pytest.approx(1 / 3) and s["all"].sensitivity_n == 3
    assert (s["male"].sensitivity, s["female"].sensitivity) == (0.0, 0.5)
    assert s["<40"].sensitivity == 1.0 and s[">65"].sensitivity_n == 1
    assert s["all"].to_json()["sensitivity_ci95"] is not None


def test_latest_decisive_feedback_wins_and_lookup_finds_older_analyses() -> None:
    older = stored(analysis("old", sex="male", band="<40", positive=True), 0)
    looked: list[str] = []

    def lookup(ecg_id: str) -> StoredEvent | None:
        looked.append(ecg_id)
        return older if ecg_id == "old" else None

    feed = counts(lookup=lookup)
    feed.index = 10
    feed(feedback("old", override=False))  # analysed before the period
    assert looked == ["old"]
    assert feed.group("male/<40").true_positive == 1
    assert feed.group("male/<40").analysed == 0  # not counted: not in the period
    feed(feedback("old", override=True, reason="disagree"))  # a clinician now disagrees
    assert feed.group("male").true_positive == 0 and feed.group("male").sensitivity is None
    feed(analysis("old", sex="male", band="<40"))  # the analysis itself comes later
    assert feed.group("male").analysed == 1


# -- the monitor on an audit log --------------------------------------------------------------


@pytest.fixture
def audit() -> Iterator[AuditLog]:
    log = AuditLog.in_memory()
    yield log
    log.close()


def test_poll_reads_only_new_entries_writes_alerts_and_updates_metrics(audit: AuditLog) -> None:
    metrics = Metrics()
    cfg = DriftConfig(window=10, min_n=5, bound=0.2)
    mon = FairnessMonitor(
        audit, reference={"female": 0.2}, config=cfg, model_version=MODEL, metrics=metrics
    )
    get = metrics.registry.get_sample_value
    assert get("ecgbridge_fairness_analysed_total", {"group": "male/>65"}) == 0  # series exist
    audit.append(AuditEvent(kind=EventKind.MESSAGE_RECEIVED, actor="mllp"))
    for i in range(4):
        audit.append(analysis(f"e{i}"))
    assert mon.poll() == [] and mon.next_index == 5
    for i in range(4, 8):
        audit.append(analysis(f"e{i}"))
    fresh = mon.poll()
    assert [(a.group, a.trigger_index) for a in fresh] == [("female", 5)]  # 5th of 5
    assert mon.poll() == []  # nothing new, no repeat
    drift = audit.search(SearchQuery(kinds=(EventKind.FAIRNESS_DRIFT.value,)))
    assert len(drift) == 1 and drift[0].patient_key is None
    assert drift[0].detail["group"] == "female" and drift[0].detail["trigger_index"] == 5
    assert to_fhir(drift[0]).type.code == "110100"  # exportable as a FHIR AuditEvent
    assert get("ecgbridge_fairness_analysed_total", {"group": "female"}) == 8
    assert get("ecgbridge_fairness_positive_total", {"group": "all"}) == 8
    assert get("ecgbridge_fairness_positive_rate", {"group": "female"}) == 1.0
    assert get("ecgbridge_fairness_window_size", {"group": "female"}) == 8
    assert get("ecgbridge_fairness_drifting", {"group": "female"}) == 1
    assert get("ecgbridge_fairness_drift_alerts_total", {"group": "female"}) == 1
    audit.append(feedback("e1", override=True, reason="disagree"))
    mon.poll()
    assert get("ecgbridge_fairness_overrides_total", {"group": "female/<40"}) == 1
    assert get("ecgbridge_fairness_analysed_total", {"group": "female"}) == 8  # no double count

    # a second replica (or this one restarted) recomputes the same, writes nothing again
    metrics2 = Metrics()
    other = FairnessMonitor(
        audit, reference={"female": 0.2}, config=cfg, model_version=MODEL, metrics=metrics2
    )
    assert other.poll() == []
    assert len(audit.search(SearchQuery(kinds=(EventKind.FAIRNESS_DRIFT.value,)))) == 1
    assert other.summary() == mon.summary()
    m2 = metrics2.registry.get_sample_value
    assert m2("ecgbridge_fairness_drift_alerts_total", {"group": "female"}) == 1


def test_an_alert_that_cannot_be_written_is_retried(audit: AuditLog) -> None:
    cfg = DriftConfig(window=5, min_n=5, bound=0.2)
    mon = FairnessMonitor(audit, reference={"all": 0.0}, config=cfg, model_version=MODEL)
    for i in range(5):
        audit.append(analysis(f"e{i}"))
    real_append = audit.append

    def broken(event: AuditEvent) -> int:
        raise OSError("database down")

    audit.append = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="database down"):
        mon.poll()
    audit.append = real_append  # type: ignore[method-assign]
    assert [a.group for a in mon.poll()] == ["all"]
    assert len(audit.search(SearchQuery(kinds=(EventKind.FAIRNESS_DRIFT.value,)))) == 1


def test_metrics_refuse_unknown_groups() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="unknown fairness group"):
        m.fairness_counts("martians", analysed=1)
    m.fairness_window("female", positive_rate=None, size=0, drifting=False)
    rate = m.registry.get_sample_value("ecgbridge_fairness_positive_rate", {"group": "female"})
    assert rate is not None and rate != rate  # NaN: no analysis yet


# -- report CLI (in process) ------------------------------------------------------------------


def test_parse_when() -> None:
    now = datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    assert parse_when("7d", now=now) == now - timedelta(days=7)
    assert parse_when("24h", now=now) == now - timedelta(hours=24)
    assert parse_when("2026-03-01T08:00:00") == T0
    assert parse_when("2026-03-01T09:00:00+01:00") == T0
    with pytest.raises(argparse.ArgumentTypeError, match="ISO-8601"):
        parse_when("last tuesday")


def test_report_cli_in_process(
    audit: AuditLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(6):
        audit.append(analysis(f"e{i}", positive=i < 3, at=T0 + timedelta(hours=i)))
    audit.append(feedback("e0", override=False, at=T0 + timedelta(hours=10)))
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"all": 0.5, "female": 0.1}))
    settings = Settings(fairness_window=4, fairness_min_n=4, fairness_drift_bound=0.3)
    argv = ["report", "--model-version", MODEL, "--reference", str(ref)]

    def run(*extra: str) -> tuple[int, str, str]:
        out = io.StringIO()
        code = cli_main([*argv, *extra], open_log=lambda: audit, settings=settings, stdout=out)
        return code, out.getvalue(), capsys.readouterr().err

    code, out, _ = run("--json", "--since", "2026-03-01T10:00:00Z")
    assert code == 0
    body = json.loads(out)
    groups = {g["group"]: g for g in body["groups"]}
    assert (groups["female"]["analysed"], groups["female"]["positive"]) == (4, 1)
    assert groups["female"]["window_rate"] == 0.25 and groups["female"]["drift"] is False
    assert groups["all"]["true_positive"] == 1  # feedback on e0, analysed before --since
    assert body["window"] == 4 and body["alerts"] == []
    code, out, _ = run()
    assert code == 0 and "female/<40" in out and "drift alerts in the period: 0" in out
    assert "sensitivity" in out and "n=1 (too few)" in out

    code, _, err = run("--since", "last tuesday")
    assert code == 2 and "--since" in err and "ISO-8601" in err
    code, _, err = run("--since", "2026-03-02", "--until", "2026-03-01")
    assert code == 2 and "--since is after --until" in err
    ref.write_text(json.dumps({"martians": 0.5}))
    code, _, err = run()
    assert code == 2 and "--reference" in err
