"""The worker's job for one inbox item: decode, analyse, build the report, write it back,
mark the item done. Safe to run twice for the same item (idempotent write-back).

Each stage is a child span of the ECG's trace (`integration.tracing`): ``ecgbridge.decode``,
``.model``, ``.alert``, ``.report_build``, ``.writeback`` (and ``.explain``, ``.picture``)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from inference.analyzer import Analyzer
from inference.explain.explainer import Explainer, Explanation
from inference.record import EcgRecord
from inference.result import AnalysisResult
from integration import auditing, failpoints
from integration.alerts import AlertSender
from integration.auditing import Auditor
from integration.inbox import Inbox, Status
from integration.ingest import decode_item
from integration.tracing import span
from integration.writeback import ReportWriter, Written
from mappers.ecg_picture import Highlight, render_ecg
from mappers.errors import MappingError
from mappers.fhir_r4 import ReportResources, build_report
from mappers.fhir_report import report_attachments

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
    #: Explanations and the picture (0 when off); the preliminary write is in writeback_ms.
    explain_ms: float = 0.0
    picture_ms: float = 0.0
    #: The rendered ECG (PNG) when pictures are on: for `ecgbridge analyze --picture`.
    picture_png: bytes | None = None


@dataclass(frozen=True, slots=True)
class Explaining:
    """What the report gets beyond triage: explanations (`inference.explain`) and the ECG
    picture on standard paper, as PNG and/or PDF in ``presentedForm``."""

    explainer: Explainer | None
    png: bool = True
    pdf: bool = True


def _explain(
    explaining: Explaining, record: EcgRecord, result: AnalysisResult
) -> Explanation | None:
    if explaining.explainer is None or not result.analysed:
        return None
    try:
        return explaining.explainer.explain(record)
    except Exception:  # an explanation must never cost the ECG its report
        log.exception("explanation of %s failed; the report goes out without it", record.record_id)
        return None


def _picture(
    explaining: Explaining,
    record: EcgRecord,
    result: AnalysisResult,
    explanation: Explanation | None,
    issued: datetime,
) -> tuple[list[dict[str, Any]], bytes | None]:
    if not (explaining.png or explaining.pdf):
        return [], None
    highlights = [
        Highlight(h.lead, h.start_s, h.end_s, h.label)
        for h in (explanation.highlights if explanation is not None else ())
        if h.lead in record.lead_names
    ]
    cf = None if explanation is None else explanation.counterfactual
    overlay = explanation.edited_signals_mv if explanation is not None and cf and cf.edits else None
    tri = result.triage
    title = (
        f"{record.record_id}: not analysed"
        if tri is None
        else f"{record.record_id}: MI/injury p={tri.probability:.2f} "
        f"({'POSITIVE' if tri.positive else 'negative'}); AI decision support, not a diagnosis"
    )
    try:
        # the PNG is always drawn: `ecgbridge analyze --picture` writes it
        pictures = render_ecg(
            record.signals_mv,
            record.fs_hz,
            record.lead_names,
            formats=("png", "pdf") if explaining.pdf else ("png",),
            highlights=highlights,
            overlay=overlay,
            title=title,
        )
    except Exception:
        log.exception("rendering %s failed; the report goes out without it", record.record_id)
        return [], None
    png = pictures["png"]
    attachments = report_attachments(
        png=png if explaining.png else None,
        pdf=pictures.get("pdf"),
        created=issued,
        title="12-lead ECG, 25 mm/s, 10 mm/mV, attributed segments shaded, counterfactual in blue",
    )
    return attachments, png


def triage_and_write(
    record: EcgRecord,
    *,
    idem_key: str,
    analyzer: Analyzer,
    writer: ReportWriter,
    now: datetime,
    alerts: AlertSender | None = None,
    ecg_id: str | None = None,
    preliminary: bool = False,
) -> Analysed:
    """Analyse one record, raise the ED alert if it is high-risk, and write the triage report
    (``preliminary`` when explanations will follow). The alert goes out before the report is
    built and written: it never waits for them."""
    t0 = time.perf_counter()
    with span("ecgbridge.model", attributes={"ecgbridge.model_version": analyzer.model_version}):
        result = analyzer.analyze(record, now=now)
    report_id = report_identity(idem_key, analyzer.model_version)
    if alerts is not None:
        with span("ecgbridge.alert"):
            alerts.send_alert(result, record, f"DiagnosticReport/{report_id}", ecg_id=ecg_id)
    t1 = time.perf_counter()
    with span("ecgbridge.report_build", attributes={"ecgbridge.preliminary": preliminary}):
        resources = build_report(
            result, record, report_id=report_id, issued=now, preliminary=preliminary
        )
    written = _write(writer, resources)
    t2 = time.perf_counter()
    return Analysed(result, written, model_ms=(t1 - t0) * 1000.0, writeback_ms=(t2 - t1) * 1000.0)


def _write(writer: ReportWriter, resources: ReportResources) -> Written:
    with span("ecgbridge.writeback") as current:
        failpoints.hit("before_writeback")
        written = writer.write(resources)
        failpoints.hit("after_writeback")
        if current.is_recording():
            current.set_attribute("ecgbridge.report_ref", written.report_ref)
        return written


def explain_and_write(
    record: EcgRecord,
    result: AnalysisResult,
    *,
    idem_key: str,
    writer: ReportWriter,
    now: datetime,
    explaining: Explaining,
) -> Analysed:
    """Add the explanations, measurements and picture to an analysed record's report and
    write it ``final`` (the same resource ids as the triage report: a new version)."""
    t0 = time.perf_counter()
    with span("ecgbridge.explain"):
        explanation = _explain(explaining, record, result)
    if explanation is not None:
        result = replace(
            result,
            measurements=None
            if explanation.measurements is None
            else dict(explanation.measurements),
            explanation=dict(explanation.to_json()),
        )
    t1 = time.perf_counter()
    with span("ecgbridge.picture"):
        attachments, png = _picture(explaining, record, result, explanation, now)
    t2 = time.perf_counter()
    with span("ecgbridge.report_build", attributes={"ecgbridge.preliminary": False}):
        resources = build_report(
            result,
            record,
            report_id=report_identity(idem_key, result.model_version),
            issued=now,
            presented_form=attachments,
        )
    written = _write(writer, resources)
    t3 = time.perf_counter()
    return Analysed(
        result,
        written,
        model_ms=0.0,
        writeback_ms=(t3 - t2) * 1000.0,
        explain_ms=(t1 - t0) * 1000.0,
        picture_ms=(t2 - t1) * 1000.0,
        picture_png=png,
    )


def analyse_and_write(
    record: EcgRecord,
    *,
    idem_key: str,
    analyzer: Analyzer,
    writer: ReportWriter,
    now: datetime,
    alerts: AlertSender | None = None,
    ecg_id: str | None = None,
    explaining: Explaining | None = None,
    preliminary: bool | None = None,
) -> Analysed:
    """Both stages in one call (the CLI, and workers told to explain in-process): the triage
    report (``preliminary`` when explanations follow, alert first), then with `explaining`
    the same report ``final`` with explanations and picture. `preliminary` overrides the
    triage report's status (default: preliminary exactly when `explaining` is given)."""
    first = triage_and_write(
        record,
        idem_key=idem_key,
        analyzer=analyzer,
        writer=writer,
        now=now,
        alerts=alerts,
        ecg_id=ecg_id,
        preliminary=explaining is not None if preliminary is None else preliminary,
    )
    if explaining is None:
        return first
    second = explain_and_write(
        record, first.result, idem_key=idem_key, writer=writer, now=now, explaining=explaining
    )
    return replace(
        second, model_ms=first.model_ms, writeback_ms=first.writeback_ms + second.writeback_ms
    )


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
    explaining: Explaining | None = None,
    explain_later: Callable[[str, int], None] | None = None,
) -> Outcome:
    """The triage stage of one inbox item (and, with `explaining` but no `explain_later`,
    the explanation stage in the same call). With `explain_later`, the item is left
    ``triaged`` after its preliminary report and `explain_later(item_id, priority)` queues
    the explanation stage (`explain_item`) on its own queue, at the ECG's own priority (a
    STAT ECG's explanation before a backfill's)."""
    item = inbox.get(item_id)
    if item is None:
        raise LookupError(f"inbox item {item_id} does not exist")
    if item.status in (Status.DONE, Status.DEAD_LETTER):
        log.info("inbox item %s already %s; nothing to do", item_id, item.status.value)
        return Outcome(item_id, item.status, item.report_ref, None)
    if item.status is Status.TRIAGED:
        # Triage is written; only the explanations are missing (a lost explain task,
        # re-queued by the reconciler).
        if explain_later is not None:
            explain_later(item_id, item.priority)
            return Outcome(item_id, Status.TRIAGED, item.report_ref, None)
        return explain_item(
            item_id,
            inbox=inbox,
            analyzer=analyzer,
            writer=writer,
            explaining=explaining,
            clock=clock,
            audit=audit,
        )
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
        with span(
            "ecgbridge.decode", attributes={"ecgbridge.content_type": item.content_type.value}
        ):
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
    staged = explaining is not None and explain_later is not None
    done = analyse_and_write(
        record,
        idem_key=item.idem_key,
        analyzer=analyzer,
        writer=writer,
        now=clock(),
        alerts=alerts,
        ecg_id=item_id,
        # staged: triage only now, written preliminary; the explanations come from their queue
        explaining=None if staged else explaining,
        preliminary=explaining is not None,
    )
    timings = {
        "queue_wait_ms": (started - item.received_at).total_seconds() * 1000.0,
        "decode_ms": decode_ms,
        "model_ms": done.model_ms,
        "explain_ms": done.explain_ms,
        "picture_ms": done.picture_ms,
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
    if staged and explain_later is not None:
        inbox.mark_triaged(
            item_id, result_json=json.dumps(body), report_ref=done.written.report_ref
        )
        explain_later(item_id, item.priority)
        log.info("inbox item %s triaged: %s", item_id, done.written.report_ref)
        return Outcome(item_id, Status.TRIAGED, done.written.report_ref, done.result)
    inbox.mark_done(item_id, result_json=json.dumps(body), report_ref=done.written.report_ref)
    log.info("inbox item %s done: %s", item_id, done.written.report_ref)
    return Outcome(item_id, Status.DONE, done.written.report_ref, done.result)


def explain_item(
    item_id: str,
    *,
    inbox: Inbox,
    analyzer: Analyzer,
    writer: ReportWriter,
    explaining: Explaining | None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    audit: Auditor | None = None,
) -> Outcome:
    """The explanation stage of a ``triaged`` item: the analysis again (deterministic, a few
    ms), the explanations and picture, the ``final`` report, then ``done``. Anything but a
    triaged item is left alone (done: nothing to do; not yet triaged: the triage task comes
    first)."""
    item = inbox.get(item_id)
    if item is None:
        raise LookupError(f"inbox item {item_id} does not exist")
    if item.status is not Status.TRIAGED:
        log.info("inbox item %s is %s, not triaged; no explanation now", item_id, item.status)
        return Outcome(item_id, item.status, item.report_ref, None)
    with span("ecgbridge.decode", attributes={"ecgbridge.content_type": item.content_type.value}):
        record = decode_item(item)
    now = clock()
    with span("ecgbridge.model", attributes={"ecgbridge.model_version": analyzer.model_version}):
        result = analyzer.analyze(record, now=now)
    stage = explaining or Explaining(None, png=False, pdf=False)
    done = explain_and_write(
        record, result, idem_key=item.idem_key, writer=writer, now=now, explaining=stage
    )
    previous = json.loads(item.result_json) if item.result_json else {}
    timings = dict(previous.get("timings_ms") or {}) | {
        "explain_ms": round(done.explain_ms, 2),
        "picture_ms": round(done.picture_ms, 2),
        "final_writeback_ms": round(done.writeback_ms, 2),
        "explain_wait_ms": round((now - item.updated_at).total_seconds() * 1000.0, 2),
    }
    body = done.result.to_json() | {"timings_ms": timings}
    if audit is not None:
        audit.append(
            auditing.report_written(
                ecg_id=item_id,
                report_ref=done.written.report_ref,
                model_version=done.result.model_version,
            )
        )
    inbox.mark_done(item_id, result_json=json.dumps(body), report_ref=done.written.report_ref)
    log.info("inbox item %s done (explained): %s", item_id, done.written.report_ref)
    return Outcome(item_id, Status.DONE, done.written.report_ref, done.result)
