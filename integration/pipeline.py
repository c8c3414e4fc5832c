"""The worker's job for one inbox item: decode, analyse, build the report, write it back,
mark the item done. Safe to run twice for the same item (idempotent write-back)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from inference.analyzer import Analyzer
from inference.record import EcgRecord
from inference.result import AnalysisResult
from integration import failpoints
from integration.inbox import Inbox, Status
from integration.ingest import decode_item
from integration.writeback import ReportWriter, Written
from mappers.errors import MappingError
from mappers.fhir_r4 import build_report

log = logging.getLogger(__name__)


def report_identity(idem_key: str, model_version: str) -> str:
    """A deterministic FHIR id for the report of one message by one model version."""
    digest = hashlib.sha256(f"{idem_key}\x00{model_version}".encode()).hexdigest()
    return f"ecg-{digest[:40]}"


@dataclass(frozen=True, slots=True)
class Outcome:
    item_id: str
    status: Status
    report_ref: str | None
    result: AnalysisResult | None


def analyse_and_write(
    record: EcgRecord,
    *,
    idem_key: str,
    analyzer: Analyzer,
    writer: ReportWriter,
    now: datetime,
) -> tuple[AnalysisResult, Written]:
    """Analyse one record and write its report (shared by the worker and the CLI)."""
    result = analyzer.analyze(record, now=now)
    resources = build_report(
        result,
        record,
        report_id=report_identity(idem_key, analyzer.model_version),
        issued=now,
    )
    failpoints.hit("before_writeback")
    written = writer.write(resources)
    failpoints.hit("after_writeback")
    return result, written


def process_item(
    item_id: str,
    *,
    inbox: Inbox,
    analyzer: Analyzer,
    writer: ReportWriter,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    max_attempts: int = 5,
) -> Outcome:
    item = inbox.get(item_id)
    if item is None:
        raise LookupError(f"inbox item {item_id} does not exist")
    if item.status in (Status.DONE, Status.DEAD_LETTER):
        log.info("inbox item %s already %s; nothing to do", item_id, item.status.value)
        return Outcome(item_id, item.status, item.report_ref, None)
    if item.attempts >= max_attempts:
        # Every earlier attempt died without recording an outcome (worker killed, OOM,
        # time limit): this ECG is poison. Park it so it never blocks the queue.
        reason = f"gave up after {item.attempts} attempts that did not finish"
        inbox.mark_dead_letter(item_id, reason=reason)
        log.error("inbox item %s dead-lettered: %s", item_id, reason)
        return Outcome(item_id, Status.DEAD_LETTER, None, None)
    inbox.mark_processing(item_id)
    try:
        record = decode_item(item)
    except MappingError as exc:  # validated at ingest; only a mapper change gets here
        reason = f"stored message no longer decodes: {exc}"
        inbox.mark_dead_letter(item_id, reason=reason)
        log.error("inbox item %s dead-lettered: %s", item_id, reason)
        return Outcome(item_id, Status.DEAD_LETTER, None, None)
    failpoints.hit("before_analysis")
    result, written = analyse_and_write(
        record, idem_key=item.idem_key, analyzer=analyzer, writer=writer, now=clock()
    )
    inbox.mark_done(
        item_id, result_json=json.dumps(result.to_json()), report_ref=written.report_ref
    )
    log.info("inbox item %s done: %s", item_id, written.report_ref)
    return Outcome(item_id, Status.DONE, written.report_ref, result)
