"""`make bench`: speed measured as ratios against a peer in the same run (these machines are
noisy; absolute times are printed for context only).

- HL7 v2 ORU^R01 (12 NA OBX x 5,000 samples) -> ECG record: ecgbridge vs python-hl7
  (`hl7.parse` + float extraction) vs hl7apy `parse_message`.
- FHIR R4 Observation (12 x 5,000 samples) -> ECG record vs fhir.resources
  `model_validate_json` alone.
- Model inference for one ECG (all heads, after preprocessing) and batched throughput.

Results go to var/bench/*.json.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path("var/bench")


def median_ms(fn: Callable[[], object], *, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def bench_parse() -> dict[str, Any]:
    import hl7
    from fhir.resources.R4B.observation import Observation
    from hl7apy.parser import parse_message

    from integration.samples import load_samples
    from mappers.fhir_r4 import observation_to_record, record_to_observation
    from mappers.hl7v2 import build_oru_r01, parse_oru_r01
    from mappers.sample_codec import parse_decimals

    record = load_samples()[0].record
    message = build_oru_r01(record, control_id="BENCH1", now=datetime.now(UTC))
    text = message.decode()

    def python_hl7() -> object:
        msg = hl7.parse(text)
        leads = []
        for seg in msg.segments("OBX"):
            if str(seg[2]) == "NA":
                leads.append([float(x) for x in str(seg[5]).split("^")])
        return leads

    ours = median_ms(lambda: parse_oru_r01(message), repeat=30)
    py_hl7 = median_ms(python_hl7, repeat=10)
    hl7apy_ms = median_ms(lambda: parse_message(text.replace("\n", "\r")), repeat=3, warmup=0)
    obs_json = json.dumps(record_to_observation(record))
    fhir_ours = median_ms(lambda: observation_to_record(obs_json), repeat=30)
    fhir_resources = median_ms(lambda: Observation.model_validate_json(obs_json), repeat=30)
    # The floor under fhir_ours: only turning the 12 SampledData.data strings into numbers
    # (the parser ours uses), with no validation, identity or record around it.
    data_texts = [c["valueSampledData"]["data"] for c in json.loads(obs_json)["component"]]
    fhir_numbers_only = median_ms(
        lambda: [parse_decimals(text, None) for text in data_texts], repeat=30
    )
    raw_sample_bytes = record.signals_mv.nbytes  # float32 samples of the record (60,000 x 4)
    hl7_peak = peak_extra_bytes(lambda: parse_oru_r01(message))
    fhir_peak = peak_extra_bytes(lambda: observation_to_record(obs_json))
    return {
        "ours_ms": ours,
        "python_hl7_ms": py_hl7,
        "hl7apy_ms": hl7apy_ms,
        "fhir_ours_ms": fhir_ours,
        "fhir_resources_ms": fhir_resources,
        "fhir_numbers_only_ms": fhir_numbers_only,
        "ratio_python_hl7": py_hl7 / ours,
        "ratio_hl7apy": hl7apy_ms / ours,
        "ratio_fhir_vs_fhir_resources": fhir_ours / fhir_resources,
        "ratio_fhir_numbers_only_vs_fhir_resources": fhir_numbers_only / fhir_resources,
        "raw_sample_bytes": raw_sample_bytes,
        "hl7_peak_extra_bytes": hl7_peak,
        "fhir_peak_extra_bytes": fhir_peak,
        "hl7_peak_vs_raw": hl7_peak / raw_sample_bytes,
        "fhir_peak_vs_raw": fhir_peak / raw_sample_bytes,
    }


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak memory allocated during one call beyond what was allocated before (tracemalloc;
    numpy reports its buffers to it), the result included."""
    import gc
    import tracemalloc

    fn()
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def bench_model(device: str = "cpu", num_threads: int | None = None) -> dict[str, Any]:
    """Model speed: one ECG, all heads, after preprocessing (the issue-5 budget: median
    < 20 ms on the 2-core CPU), the whole `Analyzer.analyze` (quality gate + preprocessing +
    model), and batched throughput. Runs on CUDA too when asked and available."""
    import torch

    from inference.analyzer import Analyzer
    from inference.preprocess import preprocess, to_model_leads
    from integration.samples import load_samples

    analyzer = Analyzer.load(device=device, num_threads=num_threads)
    meta = analyzer.weights.meta
    records = [s.record for s in load_samples()]
    one = preprocess(to_model_leads(records[0]), records[0].fs_hz, meta.preprocess)[None]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def model_only() -> object:
        out = analyzer.predict_preprocessed(one)
        sync()
        return out

    model_ms = median_ms(model_only, repeat=100, warmup=5)
    single = median_ms(lambda: analyzer.analyze(records[0]), repeat=50, warmup=3)
    batch = (records * 7)[:64]
    batch_inputs = np.stack(
        [preprocess(to_model_leads(r), r.fs_hz, meta.preprocess) for r in batch]
    )

    def model_batch() -> object:
        out = analyzer.predict_preprocessed(batch_inputs)
        sync()
        return out

    batch_model_ms = median_ms(model_batch, repeat=10)
    batch_ms = median_ms(lambda: analyzer.analyze_batch(batch), repeat=5)
    size_mb = analyzer.weights.path.stat().st_size / 1e6
    return {
        "model_version": analyzer.model_version,
        "device": device,
        "members": meta.n_members,
        "arch": meta.arch,
        "weights_mb": size_mb,
        "model_single_ecg_ms": model_ms,
        "single_ecg_ms": single,
        "batch_size": len(batch),
        "batch_model_ms": batch_model_ms,
        "batch_ms": batch_ms,
        "batched_model_ecg_per_s": len(batch) / (batch_model_ms / 1000.0),
        "batched_ecg_per_s": len(batch) / (batch_ms / 1000.0),
        "budget_model_single_ecg_ms": 20.0,
        "within_budget": model_ms < 20.0 and size_mb < 20.0,
        "n_threads": int(torch.get_num_threads()),
        "np_version": np.__version__,
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    parse = bench_parse()
    (OUT / "parse.json").write_text(json.dumps(parse, indent=2))
    print(
        f"HL7 ORU^R01 12x5000 -> record: ours {parse['ours_ms']:.2f} ms, python-hl7 "
        f"{parse['python_hl7_ms']:.1f} ms ({parse['ratio_python_hl7']:.1f}x), hl7apy "
        f"{parse['hl7apy_ms']:.0f} ms ({parse['ratio_hl7apy']:.0f}x)"
    )
    print(
        f"FHIR Observation 12x5000 -> record: ours {parse['fhir_ours_ms']:.2f} ms, "
        f"fhir.resources validate alone {parse['fhir_resources_ms']:.2f} ms "
        f"(ours / theirs = {parse['ratio_fhir_vs_fhir_resources']:.2f}; the sample numbers "
        f"alone take {parse['ratio_fhir_numbers_only_vs_fhir_resources']:.2f}x)"
    )
    print(
        f"peak extra memory / raw float32 sample bytes: HL7 {parse['hl7_peak_vs_raw']:.2f}x, "
        f"FHIR {parse['fhir_peak_vs_raw']:.2f}x"
    )
    import torch

    default_threads = torch.get_num_threads()
    one = bench_model(num_threads=1)
    (OUT / "model_1thread.json").write_text(json.dumps(one, indent=2))
    model = bench_model(num_threads=default_threads)
    (OUT / "model.json").write_text(json.dumps(model, indent=2))
    print(
        f"model, 1 intra-op thread: one ECG {one['model_single_ecg_ms']:.1f} ms (all heads, "
        f"after preprocessing), whole analyze {one['single_ecg_ms']:.1f} ms"
    )
    print(
        f"model {model['model_version']} ({model['members']} x {model['arch']}, "
        f"{model['weights_mb']:.1f} MB): one ECG, all heads after preprocessing "
        f"{model['model_single_ecg_ms']:.1f} ms (median; budget 20 ms); whole analyze "
        f"(quality gate + preprocessing + model) {model['single_ecg_ms']:.1f} ms; batch of "
        f"{model['batch_size']}: {model['batched_model_ecg_per_s']:.0f} ECG/s model only, "
        f"{model['batched_ecg_per_s']:.0f} ECG/s end to end ({model['n_threads']} threads)"
    )

    if torch.cuda.is_available():
        gpu = bench_model("cuda")
        (OUT / "model_cuda.json").write_text(json.dumps(gpu, indent=2))
        print(
            f"CUDA: one ECG {gpu['model_single_ecg_ms']:.2f} ms, batch of "
            f"{gpu['batch_size']}: {gpu['batched_model_ecg_per_s']:.0f} ECG/s model only"
        )
    print(f"written to {OUT}/parse.json and {OUT}/model.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
