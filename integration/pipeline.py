"""The worker's job for one inbox item: decode, analyse, build the report, write it back,
mark the item done. Safe to run twice for the same item (idempotent write-back)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from inference.analyzer import Analyzer
from inference.record import EcgRecord
from inference.result import AnalysisResult
from integration import auditing, failpoints
from integration.alerts import AlertSender
from integration.auditing import Auditor
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


@dataclass(frozen=True, slots=True)
class Analysed:
    result: AnalysisResult
    written: Written
    model_ms: float
    writeback_ms: float


def analyse_and_write(
    record: EcgRecord,
    *,
    idem_key: str,
    analyzer: Analyzer,
    writer: ReportWriter,
    now: datetime,
    alerts: AlertSender | None = None,
    ecg_id: str | None = None,
) -> Analysed:
    """Analyse one record and write its report (shared by the worker and the CLI).

    A high-risk triage result raises the ED alert at once, before the report is built and
    written (and before any explanation work): the alert never waits for them."""
    t0 = time.perf_counter()
    result = analyzer.analyze(record, now=now)
    if alerts is not None:
        report_ref = f"DiagnosticReport/{report_identity(idem_key, analyzer.model_version)}"
        alerts.send_alert(result, record, report_ref, ecg_id=ecg_id)
    t1 = time.perf_counter()
    resources = build_report(
        result,
        record,
        report_id=report_identity(idem_key, analyzer.model_version),
        issued=now,
    )
    failpoints.hit("before_writeback")
    written = writer.write(resources)
    failpoints.hit("after_writeback")
    t2 = time.perf_counter()
    return Analysed(result, written, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0)


def process_item(
    item_id: str,
    *,
    inbox: Inbox,
    analyzer: Analyzer,
    writer: ReportWriter,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    max_attempts: int = 5,
    audit: Auditor | None = None,
    alerts: AlertSender | None = None,
) -> Outcome:
    item = inbox.get(item_id)
    if item is None:
        raise LookupError(f"inbox item {item_id} does not exist")
    if item.status in (Status.DONE, Status.DEAD_LETTER):
        log.info("inbox item %s already %s; nothing to do", item_id, item.status.value)
        return Outcome(item_id, item.status, item.report_ref, None)
    if item.status is Status.PROCESSING and item.attempts >= max_attempts:
        # Still "processing" after this many starts: the earlier attempts died without
        # recording an outcome (worker killed, OOM, time limit). This ECG is poison; park
        # it so it never blocks the queue. (Retries after transient errors are "retrying".)
        reason = f"gave up after {item.attempts} attempts that did not finish"
        inbox.mark_dead_letter(item_id, reason=reason)
        log.error("inbox item %s dead-lettered: %s", item_id, reason)
        return Outcome(item_id, Status.DEAD_LETTER, None, None)
    started = clock()
    inbox.mark_processing(item_id)
    t0 = time.perf_counter()
    try:
        record = decode_item(item)
    except MappingError as exc:  # validated at ingest; only a mapper change gets here
        reason = f"stored message no longer decodes: {exc}"
        inbox.mark_dead_letter(item_id, reason=reason)
        log.error("inbox item %s dead-lettered: %s", item_id, reason)
        return Outcome(item_id, Status.DEAD_LETTER, None, None)
    decode_ms = (time.perf_counter() - t0) * 1000.0
    if audit is not None:
        audit.append(
            auditing.analysis_started(
                ecg_id=item_id, record=record, model_version=analyzer.model_version
            )
        )
    failpoints.hit("before_analysis")
    done = analyse_and_write(
        record,
        idem_key=item.idem_key,
        analyzer=analyzer,
        writer=writer,
        now=clock(),
        alerts=alerts,
        ecg_id=item_id,
    )
    timings = {
        "queue_wait_ms": (started - item.received_at).total_seconds() * 1000.0,
        "decode_ms": decode_ms,
        "model_ms": done.model_ms,
        "writeback_ms": done.writeback_ms,
    }
    body = done.result.to_json() | {"timings_ms": {k: round(v, 2) for k, v in timings.items()}}
    if audit is not None:
        audit.append(auditing.analysis_finished(ecg_id=item_id, record=record, result=done.result))
        audit.append(
            auditing.report_written(
                ecg_id=item_id,
                report_ref=done.written.report_ref,
                model_version=done.result.model_version,
            )
        )
    inbox.mark_done(item_id, result_json=json.dumps(body), report_ref=done.written.report_ref)
    log.info("inbox item %s done: %s", item_id, done.written.report_ref)
    return Outcome(item_id, Status.DONE, done.written.report_ref, done.result)
