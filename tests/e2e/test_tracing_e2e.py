"""One trace per ECG across real processes, and their structured logs.

A real `redis-server`, a separate `ecgbridge worker` (Celery) process and `ecgbridge serve`
(the MLLP listener), each writing its spans as JSON lines to its own file
(``ECGBRIDGE_OTEL_EXPORTER=console``, ``ECGBRIDGE_OTEL_FILE``) and its logs as JSON. One
HL7 ORU^R01 over MLLP; the listener's root span, the worker's task, model and write-back
spans must share one trace id with correct parent links, and the log lines must carry it
and no patient identifier. Kept cheap: SQLite inbox, ndjson write-back, explanations off.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from integration.mllp_client import MllpClient, ack_code
from integration.samples import load_samples
from mappers.hl7v2 import build_oru_r01
from tests.support.processes import wait_until
from tests.support.stack import EcgbridgeStack, ecgbridge_stack

pytestmark = pytest.mark.e2e


SERVE_SPANS, WORKER_SPANS = "serve-spans.jsonl", "worker-spans.jsonl"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EcgbridgeStack]:
    tmp = tmp_path_factory.mktemp("tracing")
    with ecgbridge_stack(
        tmp,
        database_url=f"sqlite:///{tmp / 'inbox.sqlite3'}",
        writeback_mode="ndjson",
        log_format="json",
        otel_exporter="console",
        worker_settings={"otel_file": str(tmp / WORKER_SPANS)},
        serve_settings={"otel_file": str(tmp / SERVE_SPANS)},
    ) as stack:
        yield stack


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _one(spans: list[dict[str, Any]], name: str, trace_id: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name and s["trace_id"] == trace_id]
    assert len(found) == 1, [(s["name"], s["trace_id"]) for s in spans]
    return found[0]


def test_one_trace_spans_the_listener_and_the_worker(stack: EcgbridgeStack) -> None:
    worker = stack.require_worker()
    sample = next(s for s in load_samples() if s.label.startswith("MI"))
    control_id = "TRC" + datetime.now(UTC).strftime("%H%M%S%f")
    message = build_oru_r01(sample.record, control_id=control_id, now=datetime.now(UTC))
    with MllpClient("127.0.0.1", stack.serve.mllp_port) as client:
        assert ack_code(client.send(message)) == "AA"

    roots = [
        s
        for s in _spans(stack.tmp / SERVE_SPANS)
        if s["name"] == "ecgbridge.receive_hl7"
        and s["attributes"].get("ecgbridge.message_id") == control_id
    ]
    assert len(roots) == 1
    root = roots[0]
    trace_id, item_id = root["trace_id"], root["attributes"]["ecgbridge.item_id"]

    def written() -> bool:
        assert worker.alive(), worker.log_tail()
        return any(
            s["name"] == "ecgbridge.analyze_ecg" and s["trace_id"] == trace_id
            for s in _spans(stack.tmp / WORKER_SPANS)
        )

    wait_until(written, timeout_s=120, what="the worker's analyze_ecg span")
    serve_spans, worker_spans = _spans(stack.tmp / SERVE_SPANS), _spans(stack.tmp / WORKER_SPANS)
    enqueue = _one(serve_spans, "ecgbridge.enqueue ecgbridge.analyze_ecg", trace_id)
    task = _one(worker_spans, "ecgbridge.analyze_ecg", trace_id)
    model = _one(worker_spans, "ecgbridge.model", trace_id)
    writeback = _one(worker_spans, "ecgbridge.writeback", trace_id)
    decode = _one(worker_spans, "ecgbridge.decode", trace_id)

    assert root["parent_span_id"] is None and root["kind"] == "SERVER"
    assert enqueue["parent_span_id"] == root["span_id"]
    assert task["parent_span_id"] == enqueue["span_id"] and task["kind"] == "CONSUMER"
    for child in (decode, model, writeback):
        assert child["parent_span_id"] == task["span_id"], child
    assert root["service"] == enqueue["service"] == "ecgbridge-serve"
    assert task["service"] == writeback["service"] == "ecgbridge-worker"
    assert task["pid"] != root["pid"]  # really two processes
    assert task["attributes"]["ecgbridge.item_id"] == item_id
    assert writeback["attributes"]["ecgbridge.report_ref"].startswith("DiagnosticReport/")
    assert root["start_ns"] <= task["start_ns"] <= writeback["start_ns"] <= task["end_ns"]

    status = httpx.get(
        f"{stack.serve.http_url}/ecg", params={"key": f"hl7:WARD|{control_id}"}, timeout=5
    ).json()
    assert status["status"] == "done"

    # Structured logs: the listener's commit line and the worker's lines carry the trace.
    serve_log = _json_lines(stack.serve.log_path)
    committed = [line for line in serve_log if line.get("event") == "committed"]
    assert any(
        line["trace_id"] == trace_id and line["item_id"] == item_id and line["channel"] == "mllp"
        for line in committed
    ), committed
    worker_log = _json_lines(worker.log_path)
    assert any("ready." in line["message"] for line in worker_log)  # Celery's own, as JSON
    done = [line for line in worker_log if line.get("item_id") == item_id]
    assert done and all(line["trace_id"] == trace_id for line in done), done
    assert {"ts", "level", "logger", "message"} <= set(done[0])
    patient = sample.record.patient
    assert patient is not None and patient.value
    for path in (stack.serve.log_path, worker.log_path, stack.tmp / SERVE_SPANS):
        assert patient.value not in path.read_text(errors="replace"), path
