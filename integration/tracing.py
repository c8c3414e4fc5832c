"""OpenTelemetry traces: one trace per ECG, listener -> queue -> worker -> write-back.

The listener starts a root span when it takes an ECG (`integration.ingest`), the enqueue
puts the W3C ``traceparent`` of the current span into the Celery message headers
(`integration.celery_app`), the worker task continues that trace (`integration.tasks`), and
the pipeline adds a child span for each stage: decode, model, alert, report build,
write-back (`integration.pipeline`).

Off unless ``ECGBRIDGE_OTEL_EXPORTER`` says otherwise: then no tracer provider is installed
and the API's no-op tracer hands out one shared non-recording span (no allocation of span
data, no export, no ids in the Celery headers).

Span attributes are ids only (channel, inbox item id, MSH-10, priority, model version):
never patient data, and exceptions are recorded by class name, not message (a message can
quote a field of the ECG).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Exporter = Literal["none", "console", "otlp"]
TRACER_NAME = "ecgbridge"
#: The W3C Trace Context header the Celery messages carry.
TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()

AttributeValue = str | int | float | bool


def tracing_enabled() -> bool:
    """Whether a tracer provider is installed (`configure_tracing`, or a test's)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def tracer() -> trace.Tracer:
    """The project's tracer (the no-op one until `configure_tracing` installs a provider)."""
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
    attributes: Mapping[str, AttributeValue | None] | None = None,
) -> Iterator[Span]:
    """A span made current for the block. An exception marks it ERROR with the exception's
    class name only (its message may quote patient data) and propagates. Tracing off: the
    shared invalid span, nothing made current (well under a microsecond)."""
    if not tracing_enabled():
        yield trace.INVALID_SPAN
        return
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    with tracer().start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attrs,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            if current.is_recording():
                current.set_status(Status(StatusCode.ERROR, exc.__class__.__name__))
                current.set_attribute("error.type", exc.__class__.__name__)
            raise


def root_span(
    name: str,
    *,
    kind: SpanKind = SpanKind.SERVER,
    attributes: Mapping[str, AttributeValue | None] | None = None,
) -> Any:
    """A span that starts a new trace whatever is current (one trace per ECG, even for
    several ECGs in one request)."""
    return span(name, kind=kind, context=Context(), attributes=attributes)


def inject_headers() -> dict[str, str]:
    """The ``traceparent`` (and ``tracestate``) of the current span; empty when tracing is
    off or no span is current."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, Any] | None) -> Context:
    """The context a message's headers carry (an empty one when they carry none)."""
    if not carrier:
        return Context()
    strings = {k: v for k, v in carrier.items() if isinstance(v, str)}
    return _PROPAGATOR.extract(strings, context=Context())


def current_trace_id() -> str | None:
    """The current trace id (32 hex digits), or None when no span is recording."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def attach(ctx: Context) -> object:
    """Make `ctx` current until `detach` (for code that cannot use ``with``)."""
    return otel_context.attach(ctx)


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


def span_to_json(s: ReadableSpan) -> dict[str, Any]:
    """One finished span as a flat JSON object (ids in W3C hex)."""
    ctx = s.get_span_context()
    assert ctx is not None
    return {
        "name": s.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(s.parent.span_id, "016x") if s.parent is not None else None,
        "kind": s.kind.name,
        "start_ns": s.start_time,
        "end_ns": s.end_time,
        "status": s.status.status_code.name,
        "attributes": dict(s.attributes or {}),
        "service": (s.resource.attributes.get("service.name") if s.resource else None),
        "pid": os.getpid(),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Finished spans as JSON lines, appended to a file (several processes may share it:
    each line is one ``write`` on an ``O_APPEND`` descriptor) or written to a stream."""

    def __init__(self, path: Path | None = None, *, stream: IO[str] | None = None) -> None:
        self._path = path
        self._stream = stream if stream is not None else (sys.stderr if path is None else None)
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(span_to_json(s), default=str) + "\n" for s in spans)
        with self._lock:
            if self._path is not None:
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, data.encode())
                finally:
                    os.close(fd)
            elif self._stream is not None:
                self._stream.write(data)
                self._stream.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def configure_tracing(
    *, exporter: Exporter, service_name: str, file: Path | None = None
) -> TracerProvider | None:
    """Install the process's tracer provider. ``none``: nothing (no-op tracer). ``console``:
    JSON lines to `file`, or to stderr. ``otlp``: OTLP over HTTP to
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter's own variables), batched."""
    if exporter == "none":
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        # written as each span ends: survives a prefork child's abrupt exit
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(file)))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)
    return provider
