"""Metrics: the typed API writes the Prometheus series; /metrics serves them; the queue
depth sums Celery's per-priority Redis lists."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from integration.metrics import Metrics, metrics_asgi_app, redis_queue_depth


class FakeRedis:
    def __init__(self, lengths: dict[str, int]) -> None:
        self.lengths = lengths

    def llen(self, name: str) -> int:
        return self.lengths.get(name, 0)


def test_counters_histograms_and_queue_depth() -> None:
    m = Metrics()
    m.messages_received("mllp")
    m.messages_received("mllp")
    m.acked("AA")
    m.nacked("duplicate_conflict")
    m.analysis_seconds("model", 0.3)
    m.writeback_error()
    m.alert_sent()
    m.fairness_check("stable")
    redis = FakeRedis({"ecgbridge": 2, "ecgbridge\x06\x165": 7, "ecgbridge\x06\x169": 100})
    m.watch_queue_depth(redis_queue_depth(redis))
    get = m.registry.get_sample_value
    assert get("ecgbridge_messages_received_total", {"channel": "mllp"}) == 2
    assert get("ecgbridge_messages_acked_total", {"code": "AA"}) == 1
    assert get("ecgbridge_messages_nacked_total", {"reason": "duplicate_conflict"}) == 1
    assert get("ecgbridge_analysis_seconds_count", {"stage": "model"}) == 1
    assert get("ecgbridge_writeback_errors_total", {"kind": "transient"}) == 1
    assert get("ecgbridge_alerts_sent_total") == 1
    assert get("ecgbridge_queue_depth", {"queue": "ecgbridge", "priority": "all"}) == 109
    assert get("ecgbridge_queue_depth", {"queue": "ecgbridge", "priority": "5"}) == 7
    with pytest.raises(ValueError, match="unknown stage"):
        m.analysis_seconds("nope", 1.0)


def test_queue_depth_of_the_triage_and_the_explain_queue() -> None:
    m = Metrics()
    redis = FakeRedis({"ecgbridge": 2, "ecgbridge-explain\x06\x165": 30, "ecgbridge-explain": 1})
    for queue in ("ecgbridge", "ecgbridge-explain"):
        m.watch_queue_depth(redis_queue_depth(redis, queue=queue), queue=queue)
    get = m.registry.get_sample_value
    assert get("ecgbridge_queue_depth", {"queue": "ecgbridge", "priority": "all"}) == 2
    assert get("ecgbridge_queue_depth", {"queue": "ecgbridge-explain", "priority": "all"}) == 31
    assert get("ecgbridge_queue_depth", {"queue": "ecgbridge-explain", "priority": "0"}) == 1


def test_broker_outage_does_not_break_the_scrape() -> None:
    m = Metrics()

    def down() -> dict[str, int]:
        raise ConnectionError("redis down")

    m.watch_queue_depth(down)
    m.alert_sent()
    assert m.registry.get_sample_value("ecgbridge_alerts_sent_total") == 1
    assert (
        m.registry.get_sample_value(
            "ecgbridge_queue_depth", {"queue": "ecgbridge", "priority": "all"}
        )
        is None
    )


def test_mounted_on_the_http_api() -> None:
    m = Metrics()
    m.messages_received("http")
    app = FastAPI()
    app.mount("/metrics", metrics_asgi_app(m))  # type: ignore[arg-type]
    resp = TestClient(app).get("/metrics/")
    assert resp.status_code == 200
    assert 'ecgbridge_messages_received_total{channel="http"} 1.0' in resp.text
