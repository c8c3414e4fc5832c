"""`ecgbridge serve`: the MLLP and HTTP listeners in one asyncio loop, and optionally a
worker process beside them (`--worker`, for one machine)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn

from integration.api import create_app as create_http_app
from integration.audit import AuditLog
from integration.cds import PatientKey, StoredAnalysis
from integration.celery_app import EXPLAIN_QUEUE, QUEUE, enqueue_analysis
from integration.celery_app import create_app as create_celery_app
from integration.fairness_monitor import FairnessMonitor
from integration.inbox import Inbox
from integration.ingest import IngestService, nak_for
from integration.metrics import Metrics, redis_queue_depth
from integration.mllp import MllpServer, server_tls_context
from integration.settings import Settings
from integration.smart import BearerValidator, get_smart_settings, require_bearer
from integration.tasks import BACKOFF_CAP_S

log = logging.getLogger(__name__)


def model_version() -> str:
    from inference.registry import DEFAULT_WEIGHTS

    return DEFAULT_WEIGHTS.meta.model_version


def reconcile(
    inbox: Inbox,
    enqueue: Any,
    *,
    older_than: datetime | None = None,
    retrying_older_than: datetime | None = None,
) -> int:
    """Queue accepted-but-unfinished items again: the queue is not the system of record
    (a Redis restart or a killed worker loses messages). An item that finished meanwhile is
    skipped by the worker, and write-back is idempotent, so a second copy does no harm."""
    items = inbox.unfinished(older_than=older_than, retrying_older_than=retrying_older_than)
    for item in items:
        try:
            enqueue(item.id, item.priority)
        except Exception:
            log.exception("reconciler could not queue %s; next round will", item.id)
            return 0
        inbox.touch(item.id)
    if items:
        log.info("reconciler re-queued %d unfinished ECGs", len(items))
    return len(items)


async def reconcile_forever(inbox: Inbox, enqueue: Any, settings: Settings) -> None:
    while True:
        await asyncio.sleep(settings.reconcile_interval_s)
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=settings.reconcile_after_s)
        retry_cutoff = cutoff - timedelta(seconds=2 * BACKOFF_CAP_S)
        try:
            await asyncio.to_thread(
                reconcile, inbox, enqueue, older_than=cutoff, retrying_older_than=retry_cutoff
            )
        except Exception:  # a database outage must not stop the listeners
            log.exception("reconciler round failed")


def start_worker_processes(settings: Settings) -> list[subprocess.Popen[bytes]]:
    """`ecgbridge worker` child processes with the same environment: one on the triage queue
    and, when explanations or pictures are on, one on the explain queue, so an ED alert never
    waits behind an explanation."""
    env = dict(os.environ)
    env.setdefault("ECGBRIDGE_DATA_DIR", str(settings.data_dir))
    env.setdefault("ECGBRIDGE_OUT_DIR", str(settings.out_dir))
    staged = settings.explain or settings.report_png or settings.report_pdf
    queues = ["triage", "explain"] if staged else ["all"]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "integration.cli", "worker", "--queues", q], env=env
        )
        for q in queues
    ]


async def serve(settings: Settings, *, with_worker: bool = False) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    audit = AuditLog.from_settings()
    inbox = Inbox.from_url(settings.effective_database_url, cipher=audit.cipher)
    celery = create_celery_app(settings)

    def enqueue(item_id: str, priority: int) -> None:
        enqueue_analysis(celery, item_id, priority=priority)

    metrics = Metrics()
    if settings.broker_url:
        import redis

        client = redis.Redis.from_url(settings.broker_url)
        for queue in (QUEUE, EXPLAIN_QUEUE):
            metrics.watch_queue_depth(redis_queue_depth(client, queue=queue), queue=queue)
    ingest = IngestService(
        inbox=inbox, enqueue=enqueue, audit=audit, metrics=metrics, patient_key=audit.patient_key
    )

    def latest(key: PatientKey) -> StoredAnalysis | None:
        keys = [audit.patient_key(key.reference)] + [
            audit.patient_key(v) for _, v in key.identifiers
        ]
        item = inbox.latest_done_for(keys)
        if item is None or item.result_json is None:
            return None
        return StoredAnalysis.from_result_json(
            item.result_json,
            ecg_id=item.id,
            report_ref=item.report_ref,
            analysed_at=item.updated_at,
        )

    intake_auth = cds_auth = None
    smart = get_smart_settings()
    if smart.auth_jwks_url:
        validator = BearerValidator(
            jwks_url=smart.auth_jwks_url,
            audience=smart.auth_audience or "",
            issuer=smart.auth_issuer,
            leeway_s=smart.auth_leeway_s,
        )
        intake_auth = require_bearer(validator, "system/Observation.write", audit=audit)
        cds_auth = require_bearer(validator, "system/DiagnosticReport.read", audit=audit)
    version = model_version()
    fairness = FairnessMonitor.for_service(
        audit, settings=settings, metrics=metrics, model_version=version
    )

    def health() -> dict[str, Any]:
        return {"status": "ok", "model_version": version, "inbox": inbox.count_by_status()}

    mllp = MllpServer(
        handler=ingest.receive_hl7,
        nak=nak_for,
        host=settings.mllp_host,
        port=settings.mllp_port,
        max_frame=settings.mllp_max_frame_bytes,
        idle_timeout_s=settings.mllp_idle_timeout_s,
        ssl_context=None
        if settings.mllp_tls_cert is None or settings.mllp_tls_key is None
        else server_tls_context(
            cert=settings.mllp_tls_cert,
            key=settings.mllp_tls_key,
            client_ca=settings.mllp_tls_client_ca,
        ),
    )
    http = uvicorn.Server(
        uvicorn.Config(
            create_http_app(
                ingest=ingest,
                inbox=inbox,
                health=health,
                audit=audit,
                metrics=metrics,
                latest=latest,
                intake_auth=intake_auth,
                cds_auth=cds_auth,
            ),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            lifespan="off",
        )
    )
    workers = start_worker_processes(settings) if with_worker else []
    await mllp.start()
    try:
        await asyncio.to_thread(reconcile, inbox, enqueue)
    except Exception:
        log.exception("start-up reconciliation failed; the periodic one will retry")
    reconciler = asyncio.create_task(reconcile_forever(inbox, enqueue, settings))
    fairness_task = asyncio.create_task(fairness.run(settings.fairness_poll_s))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    http_task = asyncio.create_task(http.serve())
    log.info(
        "ecgbridge serving: MLLP %s:%d, HTTP %s:%d",
        settings.mllp_host,
        mllp.port,
        settings.http_host,
        settings.http_port,
    )
    try:
        done_task = asyncio.create_task(stop.wait())
        await asyncio.wait({http_task, done_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reconciler.cancel()
        fairness_task.cancel()
        http.should_exit = True
        with contextlib.suppress(Exception):
            await http_task
        await mllp.close()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        inbox.dispose()
        audit.close()
