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
    return {
        "ours_ms": ours,
        "python_hl7_ms": py_hl7,
        "hl7apy_ms": hl7apy_ms,
        "fhir_ours_ms": fhir_ours,
        "fhir_resources_ms": fhir_resources,
        "ratio_python_hl7": py_hl7 / ours,
        "ratio_hl7apy": hl7apy_ms / ours,
        "ratio_fhir_vs_fhir_resources": fhir_ours / fhir_resources,
    }


def bench_model() -> dict[str, Any]:
    from inference.analyzer import Analyzer
    from integration.samples import load_samples

    analyzer = Analyzer.load(device="cpu")
    records = [s.record for s in load_samples()]
    single = median_ms(lambda: analyzer.analyze(records[0]), repeat=50, warmup=3)
    batch = records * 4
    batch_ms = median_ms(lambda: analyzer.analyze_batch(batch), repeat=5)
    return {
        "model_version": analyzer.model_version,
        "single_ecg_ms": single,
        "batch_size": len(batch),
        "batch_ms": batch_ms,
        "batched_ecg_per_s": len(batch) / (batch_ms / 1000.0),
        "n_threads": int(__import__("torch").get_num_threads()),
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
        f"(ours / theirs = {parse['ratio_fhir_vs_fhir_resources']:.2f})"
    )
    model = bench_model()
    (OUT / "model.json").write_text(json.dumps(model, indent=2))
    print(
        f"model {model['model_version']}: one ECG {model['single_ecg_ms']:.1f} ms (median, "
        f"quality gate + preprocessing + all heads), batch of {model['batch_size']}: "
        f"{model['batched_ecg_per_s']:.0f} ECG/s"
    )
    print(f"written to {OUT}/parse.json and {OUT}/model.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
