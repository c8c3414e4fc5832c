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
    return result, writer.write(resources)


def process_item(
    item_id: str,
    *,
    inbox: Inbox,
    analyzer: Analyzer,
    writer: ReportWriter,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Outcome:
    item = inbox.get(item_id)
    if item is None:
        raise LookupError(f"inbox item {item_id} does not exist")
    if item.status is Status.DONE:
        log.info("inbox item %s already done; nothing to do", item_id)
        return Outcome(item_id, Status.DONE, item.report_ref, None)
    inbox.mark_processing(item_id)
    try:
        record = decode_item(item)
    except MappingError as exc:  # validated at ingest; only a mapper change gets here
        inbox.mark_failed(item_id, error=f"stored message no longer decodes: {exc}")
        log.error("inbox item %s failed to decode: %s", item_id, exc)
        return Outcome(item_id, Status.FAILED, None, None)
    result, written = analyse_and_write(
        record, idem_key=item.idem_key, analyzer=analyzer, writer=writer, now=clock()
    )
    inbox.mark_done(
        item_id, result_json=json.dumps(result.to_json()), report_ref=written.report_ref
    )
    log.info("inbox item %s done: %s", item_id, written.report_ref)
    return Outcome(item_id, Status.DONE, written.report_ref, result)
