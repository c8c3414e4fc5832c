"""ED alert latency (issue 8, `make bench`): the time from an ECG sent over MLLP to its
signed alert webhook arriving at the paging system, at a fixed rate, with the product's
defaults (explanations and pictures on), on real redis-server, PostgreSQL and Celery workers.

Two worker layouts run in the same session, as each other's peer (the machine is shared and
noisy, so the ratio is the robust figure):

* ``dedicated``: one worker on the triage queue, one on the explain queue (what
  ``ecgbridge serve --worker`` and deploy/ run);
* ``shared``: one worker on both queues (an explanation can hold the only worker while a
  STAT ECG waits).

Only ECGs the model calls positive are sent, so every one raises an alert. Goal (issue 8):
p99 under 1 s at 5 ECGs/s. Writes var/bench/alert-latency.json.

    python -m tests.bench.alert_latency [--rate 5] [--duration 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from inference.analyzer import Analyzer
from integration.pipeline import report_identity
from integration.samples import load_samples
from tests.bench.load import pct
from tests.support.processes import (
    EcgbridgeServe,
    EcgbridgeWorker,
    RedisServer,
    ecgbridge_env,
    free_port,
    wait_until,
)

OUT = Path("var/bench")
SECRET = "bench-secret"
GOAL_P99_S = 1.0


class Pager:
    """A webhook receiver that records when each alert (by report reference) arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self._lock = threading.Lock()
        pager = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.time()
                report = str(json.loads(body).get("report", ""))
                with pager._lock:
                    pager.arrived.setdefault(report, now)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Pager:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/page"


def positive_records() -> list[str]:
    analyzer = Analyzer.load(device="cpu")
    out = []
    for s in load_samples():
        tri = analyzer.analyze(s.record).triage
        if tri is not None and tri.positive:
            out.append(s.record.record_id)
    return out


def run_layout(
    layout: str, *, rate: float, duration: float, database_url: str, records: list[str]
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"ecgbridge-alert-{layout}-"))
    with RedisServer(tmp / "redis.log") as redis, Pager() as pager:
        env = ecgbridge_env(
            broker_url=redis.url,
            database_url=database_url,
            data_dir=str(tmp / "var"),
            out_dir=str(tmp / "var" / "out"),
            explain="true",
            report_png="true",
            report_pdf="true",
        ) | {
            "ECGBRIDGE_ALERT_WEBHOOK_URL": pager.url,
            "ECGBRIDGE_ALERT_WEBHOOK_SECRET": SECRET,
        }
        queues = ["triage", "explain"] if layout == "dedicated" else ["all"]
        workers = [EcgbridgeWorker(env, tmp / f"worker-{q}.log", queues=q) for q in queues]
        for w in workers:
            w.start()
        try:
            with EcgbridgeServe(env, tmp / "serve.log") as serve:
                out = tmp / "sent.json"
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "tests.bench.mllp_sender",
                        "--port",
                        str(serve.mllp_port),
                        "--rate",
                        str(rate),
                        "--duration",
                        str(duration),
                        "--records",
                        ",".join(records),
                        "--out",
                        str(out),
                    ],
                    check=True,
                    timeout=duration + 120,
                )
                sent: dict[str, dict[str, Any]] = json.loads(out.read_text())
                version = Analyzer.load(device="cpu").model_version
                ref_of = {
                    c: f"DiagnosticReport/{report_identity(f'hl7:WARD|{c}', version)}" for c in sent
                }
                wait_until(
                    lambda: all(r in pager.arrived for r in ref_of.values()),
                    timeout_s=600,
                    what=f"alerts ({layout})",
                    interval_s=0.5,
                )
        finally:
            for w in workers:
                w.stop()
    order = sorted(sent, key=lambda c: sent[c]["sent_at"])
    latencies = [pager.arrived[ref_of[c]] - sent[c]["sent_at"] for c in order]
    return {
        "layout": layout,
        "rate_per_s": rate,
        "n": len(latencies),
        "p50_s": pct(latencies, 50),
        "p95_s": pct(latencies, 95),
        "p99_s": pct(latencies, 99),
        "max_s": max(latencies),
        "in_send_order_s": [round(v, 3) for v in latencies],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    records = positive_records()
    results = [
        run_layout(
            layout,
            rate=args.rate,
            duration=args.duration,
            database_url=args.database_url,
            records=records,
        )
        for layout in ("dedicated", "shared")
    ]
    for r in results:
        print(
            f"{r['layout']:>9}: {r['n']} alerts at {r['rate_per_s']}/s  p50 {r['p50_s']:.3f} s  "
            f"p95 {r['p95_s']:.3f} s  p99 {r['p99_s']:.3f} s  max {r['max_s']:.3f} s",
            flush=True,
        )
    dedicated, shared = results
    summary = {
        "goal_p99_s": GOAL_P99_S,
        "results": results,
        "p99_ratio_shared_over_dedicated": shared["p99_s"] / dedicated["p99_s"],
        "goal_met": dedicated["p99_s"] < GOAL_P99_S,
    }
    (OUT / "alert-latency.json").write_text(json.dumps(summary, indent=2))
    print(
        f"p99 shared / dedicated = {summary['p99_ratio_shared_over_dedicated']:.1f}x; "
        f"goal p99 < {GOAL_P99_S} s at {args.rate}/s (dedicated): "
        f"{'MET' if summary['goal_met'] else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
