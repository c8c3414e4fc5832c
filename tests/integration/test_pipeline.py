"""The worker's job for one inbox item, with in-memory twins around the real model:
order of alert vs write-back, audit chain, dead-letter rules, idempotency."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inference.analyzer import Analyzer
from inference.record import EcgRecord
from inference.result import AnalysisResult
from integration.audit import AuditLog, EventKind, SearchQuery
from integration.inbox import Inbox, Status
from integration.ingest import IngestService
from integration.pipeline import process_item
from integration.samples import Sample, load_samples
from integration.writeback import Written
from mappers.fhir_r4 import ReportResources
from mappers.hl7v2 import build_oru_r01

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class Journal:
    """Shared record of what happened, in order."""

    def __init__(self) -> None:
        self.steps: list[str] = []


class FakeWriter:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def write(self, resources: ReportResources) -> Written:
        self.journal.steps.append("write")
        rid = resources.diagnostic_report.id
        return Written(report_ref=f"DiagnosticReport/{rid}", location="memory")

    def close(self) -> None:
        return None


class FakeAlerts:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def send_alert(
        self, result: AnalysisResult, record: EcgRecord, report_ref: str, *, ecg_id: str | None
    ) -> Any:
        self.journal.steps.append(f"alert:{report_ref}")


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.load(device="cpu")


@pytest.fixture(scope="module")
def positive() -> Sample:
    return next(s for s in load_samples() if s.label.startswith("MI"))


def _accept(inbox: Inbox, sample: Sample, cid: str) -> str:
    queued: list[str] = []
    svc = IngestService(inbox=inbox, enqueue=lambda i, _p: queued.append(i))
    svc.receive_hl7(build_oru_r01(sample.record, control_id=cid, now=NOW))
    return queued[0]


def test_alert_fires_before_the_report_is_written_and_events_are_audited(
    tmp_path: Path, analyzer: Analyzer, positive: Sample
) -> None:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/i.sqlite3")
    item_id = _accept(inbox, positive, "P1")
    journal, audit = Journal(), AuditLog.in_memory()
    outcome = process_item(
        item_id,
        inbox=inbox,
        analyzer=analyzer,
        writer=FakeWriter(journal),
        audit=audit,
        alerts=FakeAlerts(journal),  # type: ignore[arg-type]
    )
    assert outcome.status is Status.DONE
    assert journal.steps[0].startswith("alert:DiagnosticReport/ecg-")
    assert journal.steps[1] == "write"
    assert journal.steps[0].removeprefix("alert:") == outcome.report_ref
    kinds = [e.kind for e in audit.search(SearchQuery(ecg_id=item_id, newest_first=False))]
    assert kinds == [
        EventKind.ANALYSIS_STARTED,
        EventKind.ANALYSIS_FINISHED,
        EventKind.REPORT_WRITTEN,
    ]
    # Done items are not processed again.
    again = process_item(item_id, inbox=inbox, analyzer=analyzer, writer=FakeWriter(journal))
    assert again.status is Status.DONE and journal.steps.count("write") == 1


def test_an_item_whose_attempts_all_died_is_dead_lettered(
    tmp_path: Path, analyzer: Analyzer, positive: Sample
) -> None:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/i.sqlite3")
    item_id = _accept(inbox, positive, "P2")
    for _ in range(3):  # three workers died mid-analysis
        inbox.mark_processing(item_id)
    journal = Journal()
    outcome = process_item(
        item_id, inbox=inbox, analyzer=analyzer, writer=FakeWriter(journal), max_attempts=3
    )
    assert outcome.status is Status.DEAD_LETTER
    item = inbox.get(item_id)
    assert item is not None and "3 attempts" in (item.error or "")
    assert journal.steps == []


def test_retrying_items_are_not_mistaken_for_poison(
    tmp_path: Path, analyzer: Analyzer, positive: Sample
) -> None:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/i.sqlite3")
    item_id = _accept(inbox, positive, "P3")
    for _ in range(5):  # five transient failures, each recorded as retrying
        inbox.mark_processing(item_id)
        inbox.mark_retrying(item_id, error="ConnectError")
    outcome = process_item(
        item_id, inbox=inbox, analyzer=analyzer, writer=FakeWriter(Journal()), max_attempts=3
    )
    assert outcome.status is Status.DONE


class KeepingWriter(FakeWriter):
    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.written: list[ReportResources] = []

    def write(self, resources: ReportResources) -> Written:
        self.written.append(resources)
        return super().write(resources)


def test_with_explanations_the_alert_and_a_preliminary_report_come_first(
    tmp_path: Path, analyzer: Analyzer, positive: Sample
) -> None:
    from inference.explain.explainer import Explainer
    from integration.pipeline import Explaining, analyse_and_write

    journal = Journal()
    writer = KeepingWriter(journal)
    done = analyse_and_write(
        positive.record,
        idem_key="hl7:WARD|PX",
        analyzer=analyzer,
        writer=writer,
        now=NOW,
        alerts=FakeAlerts(journal),  # type: ignore[arg-type]
        explaining=Explaining(Explainer.load(analyzer), png=True, pdf=False),
    )
    assert journal.steps[0].startswith("alert:") and journal.steps[1:] == ["write", "write"]
    prelim, final = (w.diagnostic_report for w in writer.written)
    assert prelim.id == final.id
    assert (prelim.status, final.status) == ("preliminary", "final")
    assert not prelim.presentedForm
    assert final.presentedForm is not None
    assert [a.contentType for a in final.presentedForm] == ["image/png"]
    assert done.picture_png is not None and done.picture_png[:4] == b"\x89PNG"
    assert done.result.explanation is not None and done.result.measurements is not None
    assert done.explain_ms > 0 and done.picture_ms > 0
    ext = {str(e.url).rsplit("/", 1)[1] for e in final.extension or []}
    assert ext == {"ecg-fairness-check", "ecg-explanation"}
    ext_pre = {str(e.url).rsplit("/", 1)[1] for e in prelim.extension or []}
    assert ext_pre == {"ecg-fairness-check"}


def test_a_failing_explainer_never_costs_the_report(analyzer: Analyzer, positive: Sample) -> None:
    from integration.pipeline import Explaining, analyse_and_write

    class Broken:
        def explain(self, record: EcgRecord) -> None:
            raise RuntimeError("boom")

    journal = Journal()
    writer = KeepingWriter(journal)
    done = analyse_and_write(
        positive.record,
        idem_key="hl7:WARD|PY",
        analyzer=analyzer,
        writer=writer,
        now=NOW,
        explaining=Explaining(Broken(), png=False, pdf=False),  # type: ignore[arg-type]
    )
    assert [w.diagnostic_report.status for w in writer.written] == ["preliminary", "final"]
    assert done.result.explanation is None and done.result.triage is not None


def test_staged_triage_leaves_the_item_triaged_and_queues_the_explanation(
    tmp_path: Path, analyzer: Analyzer, positive: Sample
) -> None:
    from inference.explain.explainer import Explainer
    from integration.pipeline import Explaining, explain_item

    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/i.sqlite3")
    item_id = _accept(inbox, positive, "S1")
    journal = Journal()
    writer = KeepingWriter(journal)
    queued: list[str] = []
    audit = AuditLog.in_memory()
    outcome = process_item(
        item_id,
        inbox=inbox,
        analyzer=analyzer,
        writer=writer,
        audit=audit,
        alerts=FakeAlerts(journal),  # type: ignore[arg-type]
        explaining=Explaining(None),
        explain_later=lambda i, p: queued.append(i),
    )
    assert outcome.status is Status.TRIAGED and queued == [item_id]
    item = inbox.get(item_id)
    assert item is not None and item.status is Status.TRIAGED and item.result_json
    assert [w.diagnostic_report.status for w in writer.written] == ["preliminary"]
    # a re-delivered triage task (reconciler) only re-queues the explanation: no second alert
    again = process_item(
        item_id,
        inbox=inbox,
        analyzer=analyzer,
        writer=writer,
        alerts=FakeAlerts(journal),  # type: ignore[arg-type]
        explaining=Explaining(None),
        explain_later=lambda i, p: queued.append(i),
    )
    assert again.status is Status.TRIAGED and queued == [item_id, item_id]
    assert sum(step.startswith("alert:") for step in journal.steps) == 1
    # the explanation stage: final report, done, triage timings kept
    done = explain_item(
        item_id,
        inbox=inbox,
        analyzer=analyzer,
        writer=writer,
        explaining=Explaining(Explainer.load(analyzer), png=True, pdf=False),
        audit=audit,
    )
    assert done.status is Status.DONE
    final = writer.written[-1].diagnostic_report
    assert final.status == "final" and final.presentedForm is not None
    item = inbox.get(item_id)
    assert item is not None and item.status is Status.DONE and item.result_json
    body = json.loads(item.result_json)
    assert body["explanation"]["attributions"] and "model_ms" in body["timings_ms"]
    assert body["timings_ms"]["explain_ms"] > 0
    # explaining a done item again does nothing
    assert (
        explain_item(item_id, inbox=inbox, analyzer=analyzer, writer=writer, explaining=None).status
        is Status.DONE
    )
    assert len(writer.written) == 2


def test_triaged_items_left_behind_are_found_by_the_reconciler(
    tmp_path: Path, analyzer: Analyzer, positive: Sample
) -> None:
    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/i.sqlite3")
    item_id = _accept(inbox, positive, "S2")
    inbox.mark_triaged(item_id, result_json="{}", report_ref="DiagnosticReport/x")
    assert [i.id for i in inbox.unfinished()] == [item_id]
    future = datetime.now(UTC) + timedelta(seconds=5)
    assert [i.id for i in inbox.unfinished(older_than=future)] == [item_id]
    past = datetime.now(UTC) - timedelta(hours=1)
    assert inbox.unfinished(older_than=past) == []
