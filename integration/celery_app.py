"""The Celery app: Redis when ``ECGBRIDGE_BROKER_URL`` is set, otherwise kombu's on-disk
``filesystem://`` transport under ``$ECGBRIDGE_DATA_DIR/broker`` (no server, same tasks,
same code path).

Configured for no loss: late acknowledgement, requeue when a worker dies, prefetch 1,
and a Redis visibility timeout longer than the task's hard time limit.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from opentelemetry.trace import SpanKind

from integration.settings import Settings, get_settings
from integration.tracing import inject_headers, span

TASK_SOFT_TIME_LIMIT_S = 120
TASK_TIME_LIMIT_S = 180
VISIBILITY_TIMEOUT_S = 3600
ANALYZE_TASK = "ecgbridge.analyze_ecg"
EXPLAIN_TASK = "ecgbridge.explain_ecg"
APP_ACK_TASK = "ecgbridge.send_app_ack"
#: Application ACKs wait behind every ECG: a notification, never ahead of an analysis.
APP_ACK_PRIORITY = 9
#: Triage: analysis, ED alert, the preliminary (or only) report. Always drained first.
QUEUE = "ecgbridge"
#: Explanations, pictures and the final report: seconds of CPU each, behind triage.
EXPLAIN_QUEUE = "ecgbridge-explain"


def broker_config(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options for these settings."""
    if settings.broker_url:
        return settings.broker_url, {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
        }
    folder = settings.broker_dir.resolve()
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        # the exchange tables, which kombu would otherwise put in ./control of the CWD
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.05,
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A configured Celery app. Listeners use it to send tasks by name; `ecgbridge worker`
    registers the tasks on it (`integration.tasks.register`) and runs it."""
    settings = settings or get_settings()
    url, options = broker_config(settings)
    app = Celery("ecgbridge", broker=url, set_as_current=False)
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        # The model loads in worker_process_init; give a busy machine time for it.
        worker_proc_alive_timeout=120,
        task_soft_time_limit=TASK_SOFT_TIME_LIMIT_S,
        task_time_limit=TASK_TIME_LIMIT_S,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_default_priority=5,
    )
    return app


def enqueue_analysis(app: Celery, item_id: str, *, priority: int = 5) -> None:
    """Queue one inbox item for analysis (by task name: the sender needs no task code).
    The message headers carry the W3C ``traceparent`` of the ECG's trace when tracing is on
    (`integration.tracing`): the worker's spans join the listener's trace."""
    _send(app, ANALYZE_TASK, item_id, queue=QUEUE, priority=priority)


def enqueue_explanation(app: Celery, item_id: str, *, priority: int = 5) -> None:
    """Queue the explanation stage of a triaged item (`integration.pipeline.explain_item`)
    at the ECG's own priority (0 = STAT first, 9 = backfill last), in the same trace."""
    _send(app, EXPLAIN_TASK, item_id, queue=EXPLAIN_QUEUE, priority=priority)


def enqueue_app_ack(app: Celery, item_id: str, *, slow_lane: bool) -> None:
    """Queue the application ACK of a finished item (`integration.app_ack`), off the
    analysis task: a slow or dead sender endpoint then never holds an ECG's triage. On the
    explanation queue when there is one (`slow_lane`), else last on the triage queue."""
    queue = EXPLAIN_QUEUE if slow_lane else QUEUE
    _send(app, APP_ACK_TASK, item_id, queue=queue, priority=APP_ACK_PRIORITY)


def _send(app: Celery, task: str, item_id: str, *, queue: str, priority: int) -> None:
    attrs: dict[str, str | int] = {
        "ecgbridge.item_id": item_id,
        "ecgbridge.priority": priority,
        "messaging.destination.name": queue,
    }
    with span(f"ecgbridge.enqueue {task}", kind=SpanKind.PRODUCER, attributes=attrs):
        headers = inject_headers()  # empty when tracing is off: no header at all then
        options: dict[str, Any] = {"headers": headers} if headers else {}
        app.send_task(task, args=[item_id], queue=queue, priority=priority, **options)
