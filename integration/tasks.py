"""Celery tasks. Registered on the app by `register`, so nothing is built at import time.

Failure policy for one ECG:
- transient (FHIR server 5xx/429/timeout, database down, broker hiccup): retry with
  exponential backoff and jitter, up to ``task_max_retries``, then dead-letter;
- permanent (the FHIR server refused the resources with a 4xx OperationOutcome, the stored
  message no longer decodes): dead-letter at once with the reason;
- anything else (a bug or a poison record): retried a few times, then dead-lettered.
A dead-lettered ECG keeps its reason in the inbox and never blocks the queue.

Two stages, two queues: ``analyze_ecg`` (queue ``ecgbridge``) analyses, alerts and writes the
triage report ("preliminary" when explanations or pictures are on) and queues
``explain_ecg`` (queue ``ecgbridge-explain``), which adds them and writes the "final" report.
Workers dedicated to the triage queue keep the ED alert fast however long the explanations
take; an explanation failure never re-runs the triage (no second alert).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Iterator
from functools import cache, cached_property
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init, worker_shutdown
from opentelemetry.trace import SpanKind

from inference.analyzer import Analyzer
from integration.alerts import AlertSender, get_alert_settings
from integration.app_ack import AppAcker, may_want_app_ack, parse_endpoints
from integration.audit import AuditLog, AuditStoreError
from integration.celery_app import (
    ANALYZE_TASK,
    APP_ACK_TASK,
    EXPLAIN_TASK,
    enqueue_app_ack,
    enqueue_explanation,
)
from integration.errors import InboxError, WriteBackError
from integration.inbox import Inbox
from integration.logging_setup import log_context
from integration.pipeline import Explaining, explain_item, process_item
from integration.settings import Settings
from integration.subscriptions import smart_auth
from integration.tracing import TRACEPARENT, extract_context, inject_headers, span
from integration.writeback import (
    FhirServerWriter,
    FhirTransactionWriter,
    MllpResultWriter,
    NdjsonSink,
    ReportWriter,
    client_tls_context,
    load_model_card,
)

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
#: Attempts for errors that are neither transient nor known-permanent (bugs, poison).
UNKNOWN_ERROR_ATTEMPTS = 3


def backoff_s(
    retries: int, *, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S
) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    ceiling = min(cap_s, base_s * 2.0**retries)
    return ceiling / 2.0 + random.uniform(0.0, ceiling / 2.0)  # noqa: S311 - not crypto


def make_writer(settings: Settings) -> ReportWriter:
    """The writer of ``settings.effective_writeback_mode`` (`integration.writeback`): FHIR
    PUTs or one transaction (with SMART Backend Services auth when configured), HL7 v2 result
    messages over MLLP, or the ndjson sink."""
    mode = settings.effective_writeback_mode
    if mode in ("put", "transaction"):
        assert settings.fhir_base_url  # the settings refuse these modes without one
        kind = FhirServerWriter if mode == "put" else FhirTransactionWriter
        return kind(
            settings.fhir_base_url,
            timeout_s=settings.fhir_timeout_s,
            auth=smart_auth(),
            model_card=load_model_card(settings.model_card_path),
        )
    if mode == "hl7v2":
        assert settings.v2_result_host  # the settings refuse the mode without one
        tls = None
        if settings.v2_result_tls_ca is not None:
            tls = client_tls_context(
                ca=settings.v2_result_tls_ca,
                cert=settings.v2_result_tls_cert,
                key=settings.v2_result_tls_key,
            )
        return MllpResultWriter(
            settings.v2_result_host,
            settings.v2_result_port,
            timeout_s=settings.v2_result_timeout_s,
            ssl_context=tls,
            receiving_application=settings.v2_result_receiving_application,
            receiving_facility=settings.v2_result_receiving_facility,
        )
    return NdjsonSink(settings.out_dir, model_card=load_model_card(settings.model_card_path))


def make_explaining(settings: Settings, analyzer: Analyzer) -> Explaining | None:
    """Explanations and pictures as the settings ask (None: triage-only reports)."""
    if not (settings.explain or settings.report_png or settings.report_pdf):
        return None
    from inference.explain.explainer import Explainer

    explainer = Explainer.load(analyzer) if settings.explain else None
    return Explaining(explainer, png=settings.report_png, pdf=settings.report_pdf)


def make_alert_sender(settings: Settings, audit: AuditLog) -> AlertSender | None:
    alert_settings = get_alert_settings()
    if not alert_settings.enabled:
        return None
    return AlertSender(
        alert_settings, fhir_base_url=settings.fhir_base_url, fhir_auth=smart_auth(), audit=audit
    )


def load_worker_analyzer(settings: Settings) -> Analyzer:
    """The worker's analyzer on ``settings.inference_device()``: behind a dynamic batcher
    (`inference.batching`) when the worker runs a thread pool (`Settings.worker_pool`), so
    its task threads share batched model calls; the plain analyzer otherwise."""
    device = settings.inference_device()
    analyzer = Analyzer.load(
        device=device,
        num_threads=settings.torch_threads,
        group_thresholds=settings.fairness_group_thresholds,
    )
    batch_max = settings.effective_batch_max(device)
    if batch_max <= 1:
        return analyzer
    from inference.batching import BatchingAnalyzer

    return BatchingAnalyzer(
        analyzer, max_batch=batch_max, wait_ms=settings.effective_batch_wait_ms(device)
    )


class _WorkerState:
    """What one worker process loads once: the model, the inbox engine, the writer."""

    def __init__(self, settings: Settings) -> None:
        self.analyzer = load_worker_analyzer(settings)
        self.audit = AuditLog.from_settings()
        self.inbox = Inbox.from_url(settings.effective_database_url, cipher=self.audit.cipher)
        self.writer = make_writer(settings)
        self.alerts = make_alert_sender(settings, self.audit)
        self.app_acks = AppAcker(
            endpoints=parse_endpoints(settings.app_ack_endpoints),
            audit=self.audit,
            timeout_s=settings.app_ack_timeout_s,
        )
        self._settings = settings

    @cached_property
    def explaining(self) -> Explaining | None:
        """Loaded on first use: a triage-only worker never needs the explainer."""
        return make_explaining(self._settings, self.analyzer)


def message_headers(request: Any) -> dict[str, str]:
    """The trace headers a task message carried. Celery (protocol 2) puts custom headers
    on the request itself; some paths keep them in ``request.headers``."""
    found: dict[str, str] = {}
    nested = getattr(request, "headers", None)
    if isinstance(nested, dict):
        found |= {k: v for k, v in nested.items() if isinstance(v, str)}
    for key in (TRACEPARENT, "tracestate"):
        value = getattr(request, key, None)
        if isinstance(value, str):
            found.setdefault(key, value)
    return found


@contextlib.contextmanager
def task_span(task: Task, name: str, item_id: str) -> Iterator[None]:
    """The task's span, a child of the enqueue span whose ``traceparent`` the message
    carries (one trace per ECG), with the item id on every log line inside."""
    retries = int(task.request.retries or 0)
    with (
        span(
            name,
            kind=SpanKind.CONSUMER,
            context=extract_context(message_headers(task.request)),
            attributes={"ecgbridge.item_id": item_id, "ecgbridge.retries": retries},
        ),
        log_context(item_id=item_id),
    ):
        yield


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, WriteBackError):
        return exc.transient
    return isinstance(exc, (InboxError, AuditStoreError, ConnectionError, TimeoutError))


def register(app: Celery, settings: Settings) -> None:
    """Register the analysis task on `app`."""

    state_lock = threading.Lock()  # a thread pool's first tasks must not load it twice
    # A second stage (explanations, pictures, final report) runs on the explanation queue.
    staged = settings.explain or settings.report_png or settings.report_pdf

    @cache
    def state() -> _WorkerState:
        with state_lock:
            return _state()

    @cache
    def _state() -> _WorkerState:
        return _WorkerState(settings)

    @worker_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def _preload_threads(**_: Any) -> None:
        # A thread pool has no worker_process_init: load in the worker process itself.
        if app.conf.worker_pool == "threads":
            state()

    @worker_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
    def _close_batcher(**_: Any) -> None:
        close = getattr(state().analyzer, "close", None) if state.cache_info().currsize else None
        if close is not None:
            close()  # finishes queued ECGs, joins the batcher thread

    @worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def _preload(**_: Any) -> None:
        # Load the model when a worker process starts, not when its first ECG arrives.
        import torch

        torch.set_num_threads(settings.torch_threads)
        state()

    @app.task(  # type: ignore[untyped-decorator]
        name=ANALYZE_TASK,
        bind=True,
        max_retries=settings.task_max_retries,
        acks_late=True,
    )
    def analyze_ecg(self: Task, item_id: str) -> dict[str, Any]:
        with task_span(self, "ecgbridge.analyze_ecg", item_id):
            return _analyze(self, item_id)

    def _analyze(self: Task, item_id: str) -> dict[str, Any]:
        s = state()
        try:
            outcome = process_item(
                item_id,
                inbox=s.inbox,
                analyzer=s.analyzer,
                writer=s.writer,
                max_attempts=settings.task_max_retries + UNKNOWN_ERROR_ATTEMPTS,
                audit=s.audit,
                alerts=s.alerts,
                # the explanation stage goes to its own queue, behind newer triage
                explaining=Explaining(None) if staged else None,
                explain_later=(
                    (lambda i, p: enqueue_explanation(app, i, priority=p)) if staged else None
                ),
            )
        except Exception as exc:
            return _on_error(self, s, item_id, exc)
        _queue_app_ack(s, item_id)
        return {"item_id": item_id, "status": outcome.status.value, "report": outcome.report_ref}

    def _queue_app_ack(s: _WorkerState, item_id: str) -> None:
        """The enhanced-mode application ACK goes out from its own task (`send_app_ack`),
        so a slow or dead sender endpoint never holds this worker's next ECG."""
        if not may_want_app_ack(s.inbox, item_id):
            return
        try:
            enqueue_app_ack(app, item_id, slow_lane=staged)
        except Exception:  # the report is written; a lost notification is logged, not raised
            log.exception("application ACK of item %s not queued", item_id)

    @app.task(  # type: ignore[untyped-decorator]
        name=APP_ACK_TASK,
        bind=True,
        max_retries=settings.task_max_retries,
        acks_late=True,
    )
    def send_app_ack(self: Task, item_id: str) -> dict[str, Any]:
        with task_span(self, "ecgbridge.send_app_ack", item_id):
            outcome = state().app_acks.after_processing(item_id, inbox=state().inbox)
            if outcome == "failed" and self.request.retries < settings.task_max_retries:
                # audited as failed; a later attempt sends it (a sent one is never resent)
                raise self.retry(countdown=backoff_s(self.request.retries))
            return {"item_id": item_id, "app_ack": outcome}

    @app.task(  # type: ignore[untyped-decorator]
        name=EXPLAIN_TASK,
        bind=True,
        max_retries=settings.task_max_retries,
        acks_late=True,
    )
    def explain_ecg(self: Task, item_id: str) -> dict[str, Any]:
        with task_span(self, "ecgbridge.explain_ecg", item_id):
            return _explain(self, item_id)

    def _explain(self: Task, item_id: str) -> dict[str, Any]:
        s = state()
        try:
            outcome = explain_item(
                item_id,
                inbox=s.inbox,
                analyzer=s.analyzer,
                writer=s.writer,
                explaining=s.explaining,
                audit=s.audit,
            )
        except Exception as exc:
            # The triage report is out; keep the item "triaged" (a retry must not re-run
            # the triage and re-alert). Transient: retry with backoff; else dead-letter.
            retries = int(self.request.retries)
            if _is_transient(exc) and retries < settings.task_max_retries:
                delay = backoff_s(retries)
                log.warning("item %s explanation: %s; retry in %.1f s", item_id, exc, delay)
                # the retry stays in the ECG's trace
                raise self.retry(exc=exc, countdown=delay, headers=inject_headers()) from exc
            reason = f"final report not written: {exc.__class__.__name__}: {exc}"
            log.error("item %s dead-lettered: %s", item_id, reason)
            with contextlib.suppress(InboxError):
                s.inbox.mark_dead_letter(item_id, reason=reason[:2000])
            return {"item_id": item_id, "status": "dead_letter", "reason": reason}
        return {"item_id": item_id, "status": outcome.status.value, "report": outcome.report_ref}

    def _on_error(self: Task, s: _WorkerState, item_id: str, exc: Exception) -> dict[str, Any]:
        retries = int(self.request.retries)
        transient = _is_transient(exc)
        permanent = isinstance(exc, WriteBackError) and not exc.transient
        limit = settings.task_max_retries if transient else UNKNOWN_ERROR_ATTEMPTS - 1
        if isinstance(exc, SoftTimeLimitExceeded):
            limit = 0
        if not permanent and retries < limit:
            delay = backoff_s(retries)
            log.warning(
                "item %s: %s: %s; retry %d/%d in %.1f s",
                item_id,
                exc.__class__.__name__,
                exc,
                retries + 1,
                limit,
                delay,
            )
            with contextlib.suppress(InboxError):
                s.inbox.mark_retrying(item_id, error=f"{exc.__class__.__name__}: {exc}"[:2000])
            raise self.retry(
                exc=exc, countdown=delay, max_retries=limit, headers=inject_headers()
            ) from exc
        reason = f"{exc.__class__.__name__}: {exc}"
        if not permanent:
            reason = f"after {retries + 1} attempts: {reason}"
        log.error("item %s dead-lettered: %s", item_id, reason)
        try:
            s.inbox.mark_dead_letter(item_id, reason=reason[:2000])
        except InboxError:
            log.exception(
                "item %s: could not record the dead letter; reconciler will retry", item_id
            )
        _queue_app_ack(s, item_id)
        return {"item_id": item_id, "status": "dead_letter", "reason": reason}
