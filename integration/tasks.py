"""Celery tasks. Registered on the app by `register`, so nothing is built at import time."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init

from inference.analyzer import Analyzer
from integration.celery_app import ANALYZE_TASK
from integration.errors import InboxError, WriteBackError
from integration.inbox import Inbox
from integration.pipeline import process_item
from integration.settings import Settings
from integration.writeback import FhirServerWriter, NdjsonSink, ReportWriter

log = logging.getLogger(__name__)


def make_writer(settings: Settings) -> ReportWriter:
    if settings.fhir_base_url:
        return FhirServerWriter(settings.fhir_base_url, timeout_s=settings.fhir_timeout_s)
    return NdjsonSink(settings.out_dir)


class _WorkerState:
    """What one worker process loads once: the model, the inbox engine, the writer."""

    def __init__(self, settings: Settings) -> None:
        self.analyzer = Analyzer.load(device=settings.device)
        self.inbox = Inbox.from_url(settings.effective_database_url)
        self.writer = make_writer(settings)


def register(app: Celery, settings: Settings) -> None:
    """Register the analysis task on `app`."""

    @cache
    def state() -> _WorkerState:
        return _WorkerState(settings)

    @worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def _preload(**_: Any) -> None:
        # Load the model when a worker process starts, not when its first ECG arrives.
        state()

    @app.task(  # type: ignore[untyped-decorator]
        name=ANALYZE_TASK,
        bind=True,
        max_retries=settings.task_max_retries,
        acks_late=True,
    )
    def analyze_ecg(self: Task, item_id: str) -> dict[str, Any]:
        s = state()
        try:
            outcome = process_item(item_id, inbox=s.inbox, analyzer=s.analyzer, writer=s.writer)
        except (WriteBackError, InboxError) as exc:
            transient = getattr(exc, "transient", True)
            if transient and self.request.retries < (self.max_retries or 0):
                delay = min(60.0, 2.0**self.request.retries)
                log.warning("item %s: %s; retry in %.0f s", item_id, exc, delay)
                raise self.retry(exc=exc, countdown=delay) from exc
            log.error("item %s failed for good: %s", item_id, exc)
            s.inbox.mark_failed(item_id, error=str(exc))
            return {"item_id": item_id, "status": "failed"}
        return {"item_id": item_id, "status": outcome.status.value, "report": outcome.report_ref}
