"""Judge a model on a PTB-XL-layout data directory; the JSON contract others rely on.

`evaluate` returns (keys are stable; values None where a metric is undefined)::

    {"model_version": str, "n": int, "data_dir": str, "folds": list[int] | None,
     "tasks": {task: {"auroc", "ci95": [lo, hi], "n_pos", "n", "sensitivity",
                      "specificity", "threshold", "by_sex": {"male", "female"},
                      "by_age_band": {"<40", "40-65", ">65"}}}}

Every record is scored by the model, including those the quality gate would refuse in
production (they are counted and logged, not dropped), so ``n`` is every record of the asked
folds. CIs are percentile bootstrap over records (``n_bootstrap`` resamples, fixed ``seed``).
Age bands: <40, 40-65 inclusive, >65; PTB-XL's age 300 (over 89) counts as >65.
Sensitivity and specificity are at the weights' shipped thresholds.

Command line: ``python -m inference.evaluate --data-dir DIR [--folds 9] [--weights FILE]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from inference.dataset import load_ptbxl
from inference.metrics import auroc, bootstrap_auroc_ci, sensitivity_specificity
from inference.model import predict_proba
from inference.preprocess import preprocess_batch
from inference.quality import assess_quality
from inference.record import LEADS_12
from inference.registry import DEFAULT_WEIGHTS, Weights, weights_from_file

logger = logging.getLogger(__name__)

AGE_BANDS: tuple[str, ...] = ("<40", "40-65", ">65")


def age_bands(age_years: npt.NDArray[np.float64]) -> npt.NDArray[np.str_]:
    """Band per record ("" when unknown); 300 (PTB-XL's over 89) falls in ">65"."""
    age = np.asarray(age_years, dtype=np.float64)
    out = np.full(age.shape, "", dtype="<U5")
    out[age < 40] = "<40"
    out[(age >= 40) & (age <= 65)] = "40-65"
    out[age > 65] = ">65"
    return out


def task_report(
    y_true: npt.NDArray[np.float32],
    prob: npt.NDArray[np.float64],
    *,
    threshold: float,
    sex: npt.NDArray[np.int64],
    age_years: npt.NDArray[np.float64],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """One task's entry of the evaluation contract."""
    y = np.asarray(y_true) > 0.5
    ci = bootstrap_auroc_ci(y, prob, n_bootstrap=n_bootstrap, seed=seed)
    sens, spec = sensitivity_specificity(y, prob, threshold)
    bands = age_bands(age_years)
    return {
        "auroc": auroc(y, prob),
        "ci95": None if ci is None else [ci[0], ci[1]],
        "n_pos": int(y.sum()),
        "n": int(y.size),
        "sensitivity": sens,
        "specificity": spec,
        "threshold": float(threshold),
        "by_sex": {
            "male": auroc(y[sex == 0], prob[sex == 0]),
            "female": auroc(y[sex == 1], prob[sex == 1]),
        },
        "by_age_band": {band: auroc(y[bands == band], prob[bands == band]) for band in AGE_BANDS},
    }


def evaluate(
    *,
    data_dir: Path,
    folds: Sequence[int] | None,
    weights: Weights | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Score every record of `folds` in `data_dir` (all when None) and report per task."""
    weights = weights or DEFAULT_WEIGHTS
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta = weights.meta
    model = weights.load_model(device)
    data = load_ptbxl(Path(data_dir), folds)
    refused = sum(
        not assess_quality(data.signals_mv[i], data.fs_hz, LEADS_12).ok for i in range(len(data))
    )
    logger.info("quality gate would refuse %d of %d records (all are scored)", refused, len(data))
    inputs = preprocess_batch(data.signals_mv, data.fs_hz, meta.preprocess)
    probs = predict_proba(model, inputs, device=device)
    tasks: dict[str, Any] = {}
    for t, task in enumerate(meta.tasks):
        labels = data.labels[:, data.tasks.index(task)]
        tasks[task] = task_report(
            labels,
            probs[:, t],
            threshold=meta.thresholds[task],
            sex=data.sex,
            age_years=data.age_years,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    return {
        "model_version": meta.model_version,
        "n": len(data),
        "data_dir": str(data_dir),
        "folds": None if folds is None else [int(f) for f in folds],
        "tasks": tasks,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--folds", type=int, nargs="*", default=None)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = evaluate(
        data_dir=args.data_dir,
        folds=args.folds or None,
        weights=None if args.weights is None else weights_from_file(args.weights),
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        device=args.device,
    )
    json.dump(report, sys.stdout, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
