"""OpenTelemetry traces, one per ECG: the listener's root span, the traceparent in the
Celery message headers, the worker task continuing the trace, the pipeline's stage spans.

The propagation test runs the real path in one process: `IngestService.receive_hl7` on a
SQLite inbox, `enqueue_analysis` on a real Celery app (kombu's in-memory broker), the real
``analyze_ecg`` task in an embedded Celery worker, the real model and the ndjson sink. Spans
go to the SDK's `InMemorySpanExporter`. The same path across real processes (redis-server,
`ecgbridge serve`, `ecgbridge worker`) is tests/e2e/test_tracing_e2e.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from integration.celery_app import QUEUE, create_app, enqueue_analysis
from integration.inbox import Inbox, Status
from integration.ingest import IngestService
from integration.samples import load_samples
from integration.settings import Settings
from integration.tasks import message_headers, register
from integration.tracing import (
    JsonLinesSpanExporter,
    configure_tracing,
    extract_context,
    inject_headers,
    root_span,
    span,
    tracing_enabled,
)
from mappers.hl7v2 import build_oru_r01

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _reset_global_provider() -> None:
    # The API lets a process set its tracer provider once; tests put it back to the no-op
    # state (what opentelemetry-test-utils' reset_trace_globals does).
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, finished spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_global_provider()


def _hex(n: int, width: int) -> str:
    return format(n, f"0{width}x")


def _by_name(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in finished if s.name == name]
    assert len(found) == 1, [s.name for s in finished]
    return found[0]


def _parent_id(s: ReadableSpan) -> int | None:
    return None if s.parent is None else s.parent.span_id


def _span_id(s: ReadableSpan) -> int:
    ctx = s.get_span_context()
    assert ctx is not None
    return ctx.span_id


def _trace_id(s: ReadableSpan) -> int:
    ctx = s.get_span_context()
    assert ctx is not None
    return ctx.trace_id


def test_one_trace_from_ingest_through_the_celery_headers_to_the_write_back(
    spans: InMemorySpanExporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite:///{tmp_path}/inbox.sqlite3"
    monkeypatch.setenv("ECGBRIDGE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("ECGBRIDGE_DATABASE_URL", db)
    settings = Settings(
        data_dir=tmp_path / "var",
        out_dir=tmp_path / "out",
        database_url=db,
        explain=False,
        report_png=False,
        report_pdf=False,
        writeback_mode="ndjson",
    )
    app = create_app(settings)
    app.conf.update(broker_url="memory://", broker_transport_options={})
    register(app, settings)
    inbox = Inbox.from_url(db)
    ingest = IngestService(
        inbox=inbox, enqueue=lambda item_id, p: enqueue_analysis(app, item_id, priority=p)
    )
    sample = next(s for s in load_samples() if s.label.startswith("MI"))
    message = build_oru_r01(sample.record, control_id="TRACE1", now=NOW)

    with start_worker(app, perform_ping_check=False, queues=[QUEUE], shutdown_timeout=30):
        ack = ingest.receive_hl7(message, channel="mllp")
        assert ack is not None and b"MSA|AA|TRACE1" in ack
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(s.name == "ecgbridge.analyze_ecg" for s in spans.get_finished_spans()):
                break
            time.sleep(0.1)
    finished = spans.get_finished_spans()
    root = _by_name(finished, "ecgbridge.receive_hl7")
    enqueue = _by_name(finished, "ecgbridge.enqueue ecgbridge.analyze_ecg")
    task = _by_name(finished, "ecgbridge.analyze_ecg")
    stages = [
        _by_name(finished, n)
        for n in (
            "ecgbridge.decode",
            "ecgbridge.model",
            "ecgbridge.report_build",
            "ecgbridge.writeback",
        )
    ]
    # one trace, and each span's parent is the step before it
    assert {_trace_id(s) for s in (root, enqueue, task, *stages)} == {_trace_id(root)}
    assert root.parent is None
    assert _parent_id(enqueue) == _span_id(root)
    assert _parent_id(task) == _span_id(enqueue)
    assert all(_parent_id(s) == _span_id(task) for s in stages)
    assert task.kind is trace.SpanKind.CONSUMER and enqueue.kind is trace.SpanKind.PRODUCER
    # ids only, never patient data
    item_id = root.attributes["ecgbridge.item_id"] if root.attributes else None
    assert isinstance(item_id, str)
    assert root.attributes is not None and root.attributes["ecgbridge.channel"] == "mllp"
    assert root.attributes["ecgbridge.message_id"] == "TRACE1"
    assert root.attributes["ecgbridge.ack_code"] == "AA"
    assert task.attributes is not None and task.attributes["ecgbridge.item_id"] == item_id
    written = _by_name(finished, "ecgbridge.writeback").attributes or {}
    assert str(written["ecgbridge.report_ref"]).startswith("DiagnosticReport/ecg-")
    patient = sample.record.patient
    assert patient is not None and patient.value
    dumped = json.dumps([dict(s.attributes or {}) for s in finished])
    assert patient.value not in dumped
    stored = inbox.get(item_id)
    assert stored is not None and stored.status is Status.DONE


def test_every_ecg_of_a_bundle_gets_its_own_trace(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    from mappers.fhir_r4 import patient_resource, record_to_observation

    inbox = Inbox.from_url(f"sqlite:///{tmp_path}/inbox.sqlite3")
    sent: list[tuple[str, dict[str, str]]] = []
    ingest = IngestService(inbox=inbox, enqueue=lambda i, _p: sent.append((i, inject_headers())))
    entries: list[dict[str, Any]] = []
    for sample in load_samples()[:2]:
        entries.append({"resource": record_to_observation(sample.record)})
        patient = patient_resource(sample.record)
        if patient is not None:
            entries.append({"resource": patient})
    body = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})
    accepted = ingest.receive_fhir(body.encode(), channel="http")
    assert len(accepted) == 2 and len(sent) == 2
    roots = [s for s in spans.get_finished_spans() if s.name == "ecgbridge.receive_fhir"]
    assert len(roots) == 2 and all(r.parent is None for r in roots)
    assert _trace_id(roots[0]) != _trace_id(roots[1])
    # the header each enqueue carried names its own ECG's trace
    for (item_id, headers), root in zip(sent, roots, strict=True):
        assert root.attributes is not None and root.attributes["ecgbridge.item_id"] == item_id
        assert headers["traceparent"].split("-")[1] == _hex(_trace_id(root), 32)


def test_a_failing_stage_is_marked_with_the_class_name_only(
    spans: InMemorySpanExporter,
) -> None:
    with (
        pytest.raises(ValueError, match="Smith"),
        root_span("ecgbridge.test"),
        span("ecgbridge.model"),
    ):
        raise ValueError("patient Smith, born 1950-01-01")
    model = _by_name(spans.get_finished_spans(), "ecgbridge.model")
    assert model.status.status_code is trace.StatusCode.ERROR
    assert model.status.description == "ValueError"
    assert not model.events  # no exception event: its message could carry PHI
    assert "Smith" not in json.dumps(dict(model.attributes or {}))


def test_tracing_off_puts_nothing_in_the_headers_and_records_nothing() -> None:
    _reset_global_provider()
    with root_span("ecgbridge.receive_hl7") as current:
        assert not current.is_recording()
        assert inject_headers() == {}
    assert extract_context({}) == extract_context(None)


def test_task_headers_are_found_on_the_request_or_in_its_headers() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    flat = SimpleNamespace(traceparent=parent, headers=None)
    nested = SimpleNamespace(headers={"traceparent": parent, "other": 3})
    assert message_headers(flat) == {"traceparent": parent}
    assert message_headers(nested) == {"traceparent": parent}
    assert message_headers(object()) == {}
    ctx = trace.get_current_span(extract_context(message_headers(flat))).get_span_context()
    assert _hex(ctx.trace_id, 32) == "0af7651916cd43dd8448eb211c80319c"
    assert _hex(ctx.span_id, 16) == "b7ad6b7169203331"


def test_json_lines_exporter_writes_one_line_per_span_with_parent_links(tmp_path: Path) -> None:
    path = tmp_path / "spans" / "s.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    t = provider.get_tracer("test")
    with t.start_as_current_span("outer"), t.start_as_current_span("inner"):
        pass
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["inner", "outer"]
    inner, outer = lines
    assert inner["trace_id"] == outer["trace_id"] and len(inner["trace_id"]) == 32
    assert inner["parent_span_id"] == outer["span_id"] and outer["parent_span_id"] is None
    provider.shutdown()


def test_the_otlp_exporter_posts_spans_to_the_collector_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ECGBRIDGE_OTEL_EXPORTER=otlp``: OTLP/HTTP protobuf to a real HTTP listener standing
    in for the collector (at ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)."""
    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        f"http://127.0.0.1:{server.server_address[1]}/v1/traces",
    )
    _reset_global_provider()
    try:
        provider = configure_tracing(exporter="otlp", service_name="ecgbridge-test")
        assert provider is not None
        with root_span("ecgbridge.receive_hl7", attributes={"ecgbridge.channel": "mllp"}):
            pass
        assert provider.force_flush(timeout_millis=10_000)
        provider.shutdown()
    finally:
        _reset_global_provider()
        server.shutdown()
        server.server_close()
    assert received, "no OTLP request reached the collector"
    path, content_type, body = received[0]
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    assert b"ecgbridge.receive_hl7" in body and b"ecgbridge-test" in body


def test_configure_tracing_none_installs_nothing() -> None:
    _reset_global_provider()
    assert configure_tracing(exporter="none", service_name="ecgbridge-test") is None
    assert not tracing_enabled()
