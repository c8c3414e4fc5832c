"""A separate process that sends ECGs over MLLP at a fixed rate (open loop) and records
when each was sent. Used by tests/bench/load.py.

    python -m tests.bench.mllp_sender --port P --rate 5 --duration 30 --out sent.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from integration.mllp_client import MllpClient, ack_code
from integration.samples import load_samples
from mappers.hl7v2 import build_oru_r01


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="ECGs per second")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--records", default="", help="only these sample record ids, comma-separated")
    args = p.parse_args()
    samples = load_samples()
    if args.records:
        wanted = set(args.records.split(","))
        samples = [s for s in samples if s.record.record_id in wanted]
    n = max(1, round(args.rate * args.duration))
    messages = []
    for i in range(n):
        cid = f"L{uuid.uuid4().hex[:14]}"
        msg = build_oru_r01(samples[i % len(samples)].record, control_id=cid, now=datetime.now(UTC))
        messages.append((cid, msg))
    sent: dict[str, dict[str, float | str]] = {}
    lock = threading.Lock()
    start = time.time() + 0.5

    def lane(k: int) -> None:
        with MllpClient("127.0.0.1", args.port, timeout_s=60) as client:
            for i in range(k, n, args.connections):
                due = start + i / args.rate
                time.sleep(max(0.0, due - time.time()))
                cid, msg = messages[i]
                t0 = time.time()
                code = ack_code(client.send(msg))
                with lock:
                    sent[cid] = {"sent_at": t0, "ack_s": time.time() - t0, "ack": code}

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(args.connections)]
    cpu0 = time.process_time()  # the messages above are built before the clock starts
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    args.out.write_text(json.dumps(sent))
    # CPU this process spent sending (it shares the machine's cores with the system under test)
    cpu_path = args.out.with_name(args.out.name + ".cpu")
    cpu_path.write_text(json.dumps({"sending_cpu_s": time.process_time() - cpu0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
