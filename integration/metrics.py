"""Prometheus metrics: a small typed API over prometheus-client.

One `Metrics` per process, built with its own `CollectorRegistry` (no module-level
globals), exposed by `make_asgi_app(metrics)` mounted at ``/metrics`` on the HTTP API.
Labels carry codes and reasons, never PHI.

Celery workers are separate processes: each keeps its own registry; scrape them with
``prometheus_client.start_http_server`` in ``worker_process_init`` or use the multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``), see deploy/README.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inference.fairness import GROUPS as FAIRNESS_GROUPS

log = logging.getLogger(__name__)

#: Seconds: an ECG stage takes milliseconds (parse) to seconds (model on CPU, write-back).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
#: Analysis stages, the label values of ``ecgbridge_analysis_seconds``.
STAGES = frozenset(
    {"decode", "quality", "preprocess", "model", "explain", "writeback", "total", "queue_wait"}
)

#: Subgroups of the fairness monitor, the label values of ``ecgbridge_fairness_*{group}``.


class RedisLike(Protocol):
    """What the queue-depth collector needs from a Redis client (redis-py fits)."""

    def llen(self, name: str) -> int: ...


class Metrics:
    """Counters, histograms and gauges of one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self._received = Counter(
            "ecgbridge_messages_received", "ECG messages received", ["channel"], registry=r
        )
        self._acked = Counter(
            "ecgbridge_messages_acked", "Positive answers sent (AA/CA, 202)", ["code"], registry=r
        )
        self._nacked = Counter(
            "ecgbridge_messages_nacked",
            "Negative answers sent (AE/AR/CE/CR, 4xx) by reason",
            ["reason"],
            registry=r,
        )
        self._analysis = Histogram(
            "ecgbridge_analysis_seconds",
            "Time per analysis stage",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._writeback_errors = Counter(
            "ecgbridge_writeback_errors", "Failed write-backs to the EHR", ["kind"], registry=r
        )
        self._alerts = Counter("ecgbridge_alerts_sent", "ED alerts sent", registry=r)
        self._fairness = Counter(
            "ecgbridge_fairness_checks",
            "Fairness checks by outcome (stable / flagged)",
            ["outcome"],
            registry=r,
        )
        self._backfill = Counter(
            "ecgbridge_backfill_files", "Backfill files by outcome", ["outcome"], registry=r
        )
        # Fairness monitor (integration.fairness_monitor): rebuilt from the audit log at start.
        self._fair_analysed = Counter(
            "ecgbridge_fairness_analysed", "ECGs analysed, by subgroup", ["group"], registry=r
        )
        self._fair_positive = Counter(
            "ecgbridge_fairness_positive",
            "Triage-positive ECGs, by subgroup",
            ["group"],
            registry=r,
        )
        self._fair_overrides = Counter(
            "ecgbridge_fairness_overrides",
            "CDS cards overridden by a clinician, by subgroup",
            ["group"],
            registry=r,
        )
        self._fair_alerts = Counter(
            "ecgbridge_fairness_drift_alerts",
            "Positive-rate drift excursions, by subgroup",
            ["group"],
            registry=r,
        )
        self._fair_rate = Gauge(
            "ecgbridge_fairness_positive_rate",
            "Positive rate over the drift window, by subgroup (NaN: no analysis yet)",
            ["group"],
            registry=r,
        )
        self._fair_window = Gauge(
            "ecgbridge_fairness_window_size",
            "Analyses in the drift window, by subgroup",
            ["group"],
            registry=r,
        )
        self._fair_drifting = Gauge(
            "ecgbridge_fairness_drifting",
            "1 while the subgroup's window positive rate is outside its bound (alert on this)",
            ["group"],
            registry=r,
        )

    def messages_received(self, channel: str) -> None:
        self._received.labels(channel=channel).inc()

    def acked(self, code: str) -> None:
        self._acked.labels(code=code).inc()

    def nacked(self, reason: str) -> None:
        self._nacked.labels(reason=reason).inc()

    def analysis_seconds(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {sorted(STAGES)}")
        self._analysis.labels(stage=stage).observe(seconds)

    def writeback_error(self, kind: str = "transient") -> None:
        self._writeback_errors.labels(kind=kind).inc()

    def alert_sent(self) -> None:
        self._alerts.inc()

    def fairness_check(self, outcome: str) -> None:
        self._fairness.labels(outcome=outcome).inc()

    def backfill_file(self, outcome: str) -> None:
        self._backfill.labels(outcome=outcome).inc()

    def fairness_counts(
        self, group: str, *, analysed: int = 0, positive: int = 0, overrides: int = 0
    ) -> None:
        """Add to a subgroup's running counts (zeros create the series, alerts' too)."""
        _check_group(group)
        self._fair_alerts.labels(group=group)
        self._fair_analysed.labels(group=group).inc(analysed)
        self._fair_positive.labels(group=group).inc(positive)
        self._fair_overrides.labels(group=group).inc(overrides)

    def fairness_window(
        self, group: str, *, positive_rate: float | None, size: int, drifting: bool
    ) -> None:
        """A subgroup's drift window now (``positive_rate`` None: empty window)."""
        _check_group(group)
        self._fair_rate.labels(group=group).set(
            float("nan") if positive_rate is None else positive_rate
        )
        self._fair_window.labels(group=group).set(size)
        self._fair_drifting.labels(group=group).set(1 if drifting else 0)

    def fairness_drift_alert(self, group: str) -> None:
        _check_group(group)
        self._fair_alerts.labels(group=group).inc()

    def watch_queue_depth(
        self, depth: Callable[[], dict[str, int]], *, queue: str = "ecgbridge"
    ) -> None:
        """Export ``ecgbridge_queue_depth{queue, priority}`` of `queue`, read at scrape time
        (call once per queue: the triage and the explain queue)."""
        collector: QueueDepthCollector | None = getattr(self, "_depth_collector", None)
        if collector is None:
            collector = QueueDepthCollector({})
            self.registry.register(collector)
            self._depth_collector = collector
        collector.add(queue, depth)


def _check_group(group: str) -> None:
    if group not in FAIRNESS_GROUPS:
        raise ValueError(f"unknown fairness group {group!r}; one of {list(FAIRNESS_GROUPS)}")


class QueueDepthCollector(Collector):
    """``ecgbridge_queue_depth``: messages waiting, per priority and summed (priority="all")."""

    def __init__(self, depths: dict[str, Callable[[], dict[str, int]]]) -> None:
        self._depths = dict(depths)

    def add(self, queue: str, depth: Callable[[], dict[str, int]]) -> None:
        self._depths[queue] = depth

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for queue, depth in sorted(self._depths.items()):
            try:
                per_priority = depth()
            except Exception as exc:  # a broker outage must not break the whole scrape
                log.warning("queue depth of %s unavailable: %s", queue, exc.__class__.__name__)
                continue
            for priority, n in sorted(per_priority.items()):
                family.add_metric([queue, priority], float(n))
            family.add_metric([queue, "all"], float(sum(per_priority.values())))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "ecgbridge_queue_depth",
            "ECGs waiting in the broker queue",
            labels=["queue", "priority"],
        )


def redis_queue_depth(
    client: RedisLike, *, queue: str = "ecgbridge", priority_steps: Iterable[int] = range(10)
) -> Callable[[], dict[str, int]]:
    """A depth reader for Celery's Redis transport, which keeps one list per priority step:
    ``queue`` for 0 and ``queue + "\\x06\\x16" + str(p)`` for p > 0."""
    sep = "\x06\x16"
    steps = list(priority_steps)

    def depth() -> dict[str, int]:
        return {str(p): int(client.llen(queue if p == 0 else f"{queue}{sep}{p}")) for p in steps}

    return depth


def metrics_asgi_app(metrics: Metrics) -> Callable[..., object]:
    """The ASGI app that serves ``metrics`` (mount it: ``app.mount("/metrics", ...)``)."""
    app: Callable[..., object] = make_asgi_app(registry=metrics.registry)
    return app
