"""Load benchmark (issue 4, `make bench`): ECGs over MLLP at fixed rates from a separate
process; per ECG, the time from send to its DiagnosticReport stored on the FHIR server
(the server's `meta.lastUpdated`), on real redis-server, Celery worker(s), FHIR server and
PostgreSQL. Prints throughput and p50/p95/p99 per rate, where the time goes (queue wait,
decode, model, write-back, from the worker's own timings), and writes var/bench/load.json.

    python -m tests.bench.load [--workers 1] [--rates 1,5,10,15,20,25]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from inference.registry import DEFAULT_WEIGHTS
from integration.pipeline import report_identity
from tests.support.fhir_server import FhirServerProcess
from tests.support.processes import (
    EcgbridgeServe,
    EcgbridgeWorker,
    RedisServer,
    ecgbridge_env,
    wait_until,
)

OUT = Path("var/bench")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100.0 * (len(s) - 1)))]


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds used: user + system) from /proc."""
    table: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15
        table[int(entry)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    return table


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process tree (a root pid and its descendants),
    plus every ``postgres`` process (the system PostgreSQL: inbox, audit log)."""
    table = _proc_table()
    by_pid = {pid: name for name, pid in roots.items()}
    out = dict.fromkeys([*roots, "postgres"], 0.0)
    for pid, (_, comm, cpu) in table.items():
        if comm == "postgres":
            out["postgres"] += cpu
            continue
        node, seen = pid, 0
        while node not in by_pid and node in table and seen < 64:
            node, seen = table[node][0], seen + 1
        if node in by_pid:
            out[by_pid[node]] += cpu
    return out


def run_rate(
    serve: EcgbridgeServe,
    fhir: FhirServerProcess,
    rate: float,
    duration: float,
    tmp: Path,
    roots: dict[str, int] | None = None,
) -> dict[str, Any]:
    out = tmp / f"sent-{rate}.json"
    cpu_before = cpu_seconds(roots or {})
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
            "--out",
            str(out),
        ],
        check=True,
        timeout=duration + 120,
    )
    sent: dict[str, dict[str, Any]] = json.loads(out.read_text())
    version = DEFAULT_WEIGHTS.meta.model_version
    rid_to_cid = {report_identity(f"hl7:WARD|{c}", version): c for c in sent}
    stored: dict[str, float] = {}

    in_send_order = sorted(rid_to_cid, key=lambda r: sent[rid_to_cid[r]]["sent_at"])

    def collect() -> bool:
        # The latency comes from the server's lastUpdated, so polling late costs nothing;
        # polling in send order and stopping at the first missing report keeps this
        # bench's own GETs from loading the FHIR server while the backlog drains.
        for rid in in_send_order:
            if rid in stored:
                continue
            resp = httpx.get(f"{fhir.base_url}/DiagnosticReport/{rid}", timeout=10)
            if resp.status_code != 200:
                return False
            ts = resp.json()["meta"]["lastUpdated"].replace("Z", "+00:00")
            stored[rid] = datetime.fromisoformat(ts).timestamp()
        return True

    wait_until(collect, timeout_s=300, what=f"reports at {rate}/s", interval_s=2.0)
    cpu_after = cpu_seconds(roots or {})
    cpu_ms = {k: 1000 * (cpu_after[k] - cpu_before[k]) / len(sent) for k in cpu_after}
    sending = json.loads(out.with_name(out.name + ".cpu").read_text())["sending_cpu_s"]
    cpu_ms["sender"] = 1000 * sending / len(sent)
    latencies = [stored[r] - sent[c]["sent_at"] for r, c in rid_to_cid.items()]
    first = min(s["sent_at"] for s in sent.values())
    span = max(stored.values()) - first
    stages: dict[str, list[float]] = {}
    with httpx.Client(base_url=serve.http_url, timeout=10) as http:
        for cid in sent:
            res = http.get("/ecg", params={"key": f"hl7:WARD|{cid}"}).json()["result"]
            for k, v in (res.get("timings_ms") or {}).items():
                stages.setdefault(k, []).append(float(v))
    half = len(latencies) // 2
    order = sorted(rid_to_cid, key=lambda r: sent[rid_to_cid[r]]["sent_at"])
    lat_sorted = [stored[r] - sent[rid_to_cid[r]]["sent_at"] for r in order]
    early, late = statistics.median(lat_sorted[:half] or [0]), statistics.median(lat_sorted[half:])
    return {
        "rate_per_s": rate,
        "n": len(sent),
        "throughput_per_s": len(sent) / span,
        "p50_s": pct(latencies, 50),
        "p95_s": pct(latencies, 95),
        "p99_s": pct(latencies, 99),
        "ack_p50_ms": 1000 * statistics.median(s["ack_s"] for s in sent.values()),
        # kept up: the reports came out as fast as the ECGs went in, and later ECGs did
        # not wait much longer than earlier ones (a backlog that built up at the start,
        # e.g. while workers warmed up, shows in the throughput instead)
        "backlog_growing": late > 2 * early + 0.5 or len(sent) / span < 0.9 * rate,
        "stage_median_ms": {k: statistics.median(v) for k, v in stages.items()},
        # CPU time per ECG by process (the report polling of this bench is not in it): the
        # machine cannot sustain more than cores / total, whatever the scheduling
        "cpu_ms_per_ecg": cpu_ms,
        "cpu_ms_per_ecg_total": sum(cpu_ms.values()),
        "cpu_bound_ceiling_per_s": (os.cpu_count() or 1) * 1000 / max(sum(cpu_ms.values()), 1e-9),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--rates", default="1,5,10,15,20,25")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument(
        "--writeback-mode",
        choices=("put", "transaction"),
        default="put",
        help="put: one request per resource; transaction: one Bundle per report",
    )
    p.add_argument(
        "--batch-max",
        type=int,
        default=1,
        help="ECGs per model call in each worker (>1: a thread-pool worker batching its tasks)",
    )
    p.add_argument("--batch-wait-ms", type=float, default=0.0)
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ecgbridge-load-"))
    results = []
    with RedisServer(tmp / "redis.log") as redis, FhirServerProcess() as fhir:
        env = ecgbridge_env(
            broker_url=redis.url,
            database_url=args.database_url,
            fhir_base_url=fhir.base_url,
            data_dir=str(tmp / "var"),
            worker_concurrency=str(args.workers),
            writeback_mode=args.writeback_mode,
            batch_max=str(args.batch_max),
            batch_wait_ms=str(args.batch_wait_ms),
        )
        with (
            EcgbridgeWorker(env, tmp / "worker.log") as worker,
            EcgbridgeServe(env, tmp / "serve.log") as serve,
        ):
            time.sleep(3)
            roots = {
                name: proc.proc.pid
                for name, proc in (("serve", serve), ("worker", worker), ("redis", redis))
                if proc.proc is not None
            }
            if fhir.pid is not None:
                roots["fhir_server"] = fhir.pid
            for rate in [float(r) for r in args.rates.split(",")]:
                duration = args.duration if rate >= 5 else max(args.duration, 20.0)
                r = run_rate(serve, fhir, rate, duration, tmp, roots)
                results.append(r)
                print(
                    f"workers={args.workers} {args.writeback_mode} batch {args.batch_max} "
                    f"rate {rate:5.1f}/s: throughput "
                    f"{r['throughput_per_s']:5.1f}/s  p50 {r['p50_s']:.3f} s  "
                    f"p95 {r['p95_s']:.3f} s  p99 {r['p99_s']:.3f} s  "
                    f"ack p50 {r['ack_p50_ms']:.0f} ms  "
                    f"backlog {'GROWING' if r['backlog_growing'] else 'stable'}  stages "
                    + ", ".join(f"{k} {v:.0f}" for k, v in r["stage_median_ms"].items()),
                    flush=True,
                )
                print(
                    f"    CPU per ECG {r['cpu_ms_per_ecg_total']:.0f} ms ("
                    + ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_ms_per_ecg"].items())
                    + f"): at most {r['cpu_bound_ceiling_per_s']:.1f} ECG/s on "
                    f"{os.cpu_count()} cores",
                    flush=True,
                )
    sustained = [r["rate_per_s"] for r in results if not r["backlog_growing"]]
    summary = {
        "workers": args.workers,
        "writeback_mode": args.writeback_mode,
        "batch_max": args.batch_max,
        "batch_wait_ms": args.batch_wait_ms,
        "results": results,
        "max_sustained_rate_per_s": max(sustained) if sustained else 0.0,
    }
    name = f"load-{args.workers}w" + (
        f"-{args.writeback_mode}-b{args.batch_max}"
        if (args.writeback_mode, args.batch_max) != ("put", 1)
        else ""
    )
    (OUT / f"{name}.json").write_text(json.dumps(summary, indent=2))
    print(
        f"highest rate sustained without a growing backlog: {summary['max_sustained_rate_per_s']}/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
