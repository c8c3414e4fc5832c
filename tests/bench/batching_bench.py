"""Batched inference, as ratios within one run (`make bench` on CPU, `make bench-gpu` on CUDA).

1. Model only (all heads, after preprocessing, `Analyzer.predict_preprocessed`): the time per
   ECG at batch 1, 8 and 32, and the throughput of batch 8 / 32 relative to batch 1.
2. The worker's path: `threads` caller threads each analysing ECGs (`Analyzer.analyze`, with
   quality gate and preprocessing), once through a plain shared analyzer and once through
   the dynamic batcher (`inference.batching.BatchingAnalyzer`, batch max and wait as the
   worker's defaults for the device); throughput ratio batched / unbatched.

``--device cuda`` exits 2 with a clear message when torch sees no CUDA device. Results go to
var/bench/batching_<device>.json.

    python -m tests.bench.batching_bench [--device cpu|cuda] [--threads N] [--ecgs N]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.bench.run import OUT, median_ms


def _throughput(
    n_threads: int, per_thread: int, call: Callable[[int], object]
) -> tuple[float, float]:
    """ECG/s and wall seconds for n_threads threads each making per_thread calls."""
    barrier = threading.Barrier(n_threads + 1)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        barrier.wait()
        try:
            for i in range(per_thread):
                call(t * per_thread + i)
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return n_threads * per_thread / wall, wall


def bench(device: str, *, torch_threads: int, n_threads: int, n_ecgs: int) -> dict[str, Any]:
    import torch

    from inference.analyzer import Analyzer
    from inference.batching import BatchingAnalyzer
    from inference.preprocess import preprocess, to_model_leads
    from integration.samples import load_samples
    from integration.settings import Settings

    analyzer = Analyzer.load(device=device, num_threads=torch_threads)
    meta = analyzer.weights.meta
    records = [s.record for s in load_samples()]
    inputs = np.stack([preprocess(to_model_leads(r), r.fs_hz, meta.preprocess) for r in records])

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    per_ecg_ms: dict[int, float] = {}
    for size in (1, 8, 32):
        batch = inputs[np.arange(size) % len(inputs)]

        def call(batch: np.ndarray[Any, Any] = batch) -> object:
            out = analyzer.predict_preprocessed(batch)
            sync()
            return out

        repeat = {1: 60, 8: 15, 32: 6}[size]
        per_ecg_ms[size] = median_ms(call, repeat=repeat, warmup=2) / size

    settings = Settings(_env_file=None)
    batch_max = settings.effective_batch_max(device)
    wait_ms = settings.effective_batch_wait_ms(device)
    if batch_max <= 1:  # the CPU default does not batch; measure what batching would give
        batch_max, wait_ms = 8, 5.0
    per_thread = max(1, n_ecgs // n_threads)

    def plain(i: int) -> object:
        return analyzer.analyze(records[i % len(records)])

    plain(0)
    unbatched_eps, unbatched_s = _throughput(n_threads, per_thread, plain)
    batched = BatchingAnalyzer(analyzer, max_batch=batch_max, wait_ms=wait_ms)
    try:
        batched_eps, batched_s = _throughput(
            n_threads, per_thread, lambda i: batched.analyze(records[i % len(records)])
        )
        stats = batched.batcher.stats()
    finally:
        batched.close()
    return {
        "bench": "batching",
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "model_version": analyzer.model_version,
        "torch_threads": int(torch.get_num_threads()),
        "model_per_ecg_ms": {str(k): v for k, v in per_ecg_ms.items()},
        "model_throughput_ratio_b8_vs_b1": per_ecg_ms[1] / per_ecg_ms[8],
        "model_throughput_ratio_b32_vs_b1": per_ecg_ms[1] / per_ecg_ms[32],
        "worker_path": {
            "caller_threads": n_threads,
            "ecgs": n_threads * per_thread,
            "batch_max": batch_max,
            "wait_ms": wait_ms,
            "unbatched_ecg_per_s": unbatched_eps,
            "batched_ecg_per_s": batched_eps,
            "unbatched_s": unbatched_s,
            "batched_s": batched_s,
            "ratio_batched_vs_unbatched": batched_eps / unbatched_eps,
            "batch_sizes": {str(k): v for k, v in stats.sizes.items()},
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=16, help="caller threads (worker tasks)")
    p.add_argument("--ecgs", type=int, default=320, help="ECGs per worker-path run")
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)

    from inference.analyzer import resolve_device
    from inference.errors import DeviceUnavailableError

    try:
        device = resolve_device(args.device)
    except DeviceUnavailableError as exc:
        print(f"batching bench on {args.device}: {exc}", file=sys.stderr)
        return 2
    result = bench(
        device, torch_threads=args.torch_threads, n_threads=args.threads, n_ecgs=args.ecgs
    )
    OUT.mkdir(parents=True, exist_ok=True)
    path = Path(OUT) / f"batching_{args.device}.json"
    path.write_text(json.dumps(result, indent=2))
    ms = result["model_per_ecg_ms"]
    wp = result["worker_path"]
    print(
        f"batching on {result['device_name']} ({result['torch_threads']} torch threads): "
        f"model per ECG {ms['1']:.2f} ms at batch 1, {ms['8']:.2f} ms at 8, {ms['32']:.2f} ms "
        f"at 32 (throughput x{result['model_throughput_ratio_b8_vs_b1']:.2f} / "
        f"x{result['model_throughput_ratio_b32_vs_b1']:.2f} vs batch 1)"
    )
    print(
        f"worker path, {wp['caller_threads']} threads, {wp['ecgs']} ECGs: unbatched "
        f"{wp['unbatched_ecg_per_s']:.0f} ECG/s, batched (max {wp['batch_max']}, wait "
        f"{wp['wait_ms']:g} ms) {wp['batched_ecg_per_s']:.0f} ECG/s "
        f"(x{wp['ratio_batched_vs_unbatched']:.2f}); batch sizes {wp['batch_sizes']}"
    )
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
