"""Judge a model on a PTB-XL-layout data directory; the JSON contract others rely on.

`evaluate` returns (foundation keys are stable; new keys are added, never renamed; values are
None where a metric is undefined)::

    {"model_version": str, "n": int, "data_dir": str, "folds": list[int] | None,
     "tasks": {task: {"auroc", "ci95": [lo, hi], "n_pos", "n", "sensitivity",
                      "specificity", "threshold", "by_sex": {"male", "female"},
                      "by_age_band": {"<40", "40-65", ">65"},
                      # added by issue 5:
                      "sensitivity_ci95", "specificity_ci95", "ppv", "npv",
                      "ece", "brier", "operating_point",
                      "subgroups": {"male"|"female"|"<40"|"40-65"|">65":
                                    {"n", "n_pos", "auroc", "sensitivity", "specificity"}},
                      "uncertainty": {"mean_sd", "mean_sd_correct", "mean_sd_wrong",
                                      "auroc_most_certain_80pct"} | None}},
     # added by issue 5:
     "calibration": {task: method}, "quality_refused": int, "members": int,
     "stenosis": {"assessed": bool, "reason": str},
     # added by issue 6 (the triage output "mi"; see inference.subgroups):
     "subgroups": {"overall": {...}, "sex": {"male", "female"}, "age_band": {...},
                   "sex_x_age_band": {"female/<40", ...}, "site": {...}, "device": {...},
                   each: {"n", "n_pos", "auroc", "ci95", "sensitivity", "specificity",
                          "ece", "positive_rate", "flag_low_sensitivity", ...},
                   "flagged": ["sex:female", ...]},
     "fairness": {"auroc_gap_sex", "sensitivity_gap_sex", "auroc_gap_age",
                  "sensitivity_gap_age"},
     "backdoor": {"unadjusted" | "adjusted" | "z_aware" | "group_thresholds":
                  {"auroc", "ci95", "sensitivity", "specificity", "by_group", "gaps"}} | None}

Tasks are the model's heads (`WeightsMeta.tasks`): ``mi``, the territories, ``ischemia`` and
the rhythms for the shipped model. Probabilities are calibrated with the weights' own maps.
Every record is scored, including those the quality gate would refuse in production (they are
counted, not dropped), so ``n`` is every record of the asked folds. AUROC CIs are percentile
bootstrap over records (``n_bootstrap`` resamples, fixed ``seed``); sensitivity and
specificity CIs are Wilson intervals. ECE: 10 equal-width bins. Age bands: <40, 40-65
inclusive, >65; PTB-XL's age 300 (over 89) counts as >65. Sensitivity and specificity are at
the weights' shipped thresholds.

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

from inference.calibration import brier
from inference.dataset import PtbxlData, load_ptbxl
from inference.ensemble import predict_logits
from inference.fairness import (
    AGE_BANDS,
    compare,
    load_fairness,
    sex_and_band_masks,
)
from inference.fairness import band_of as age_bands
from inference.metrics import auroc
from inference.preprocess import preprocess_batch
from inference.quality import assess_quality
from inference.record import LEADS_12
from inference.registry import DEFAULT_WEIGHTS, Weights, weights_from_file
from inference.scoring import score
from inference.subgroups import (
    auroc_ci95,
    fairness_gaps,
    group_figures,
    reliability_png,
    subgroup_audit,
)

logger = logging.getLogger(__name__)

STENOSIS_NOT_ASSESSED = (
    "not assessed: no angiography-labelled training data; needs site fine-tuning and "
    "validation (inference.site_finetune)"
)


def uncertainty_summary(
    y: npt.NDArray[np.bool_],
    prob: npt.NDArray[np.float64],
    sd: npt.NDArray[np.float64] | None,
    threshold: float,
) -> dict[str, float | None] | None:
    """Is the spread informative? Mean spread of right and wrong calls at the operating
    point, and the AUROC on the 80 % of records with the smallest spread."""
    if sd is None or y.size == 0:
        return None
    wrong = (prob >= threshold) != y
    keep = sd <= np.quantile(sd, 0.8)
    return {
        "mean_sd": float(sd.mean()),
        "mean_sd_correct": float(sd[~wrong].mean()) if (~wrong).any() else None,
        "mean_sd_wrong": float(sd[wrong].mean()) if wrong.any() else None,
        "auroc_most_certain_80pct": auroc(y[keep], prob[keep]),
    }


def task_report(
    y_true: npt.NDArray[np.float32],
    prob: npt.NDArray[np.float64],
    *,
    threshold: float,
    sex: npt.NDArray[np.int64],
    age_years: npt.NDArray[np.float64],
    n_bootstrap: int = 1000,
    seed: int = 0,
    sd: npt.NDArray[np.float64] | None = None,
    operating_point: str | None = None,
) -> dict[str, Any]:
    """One task's entry of the evaluation contract."""
    y = np.asarray(y_true) > 0.5
    prob = np.asarray(prob, dtype=np.float64)
    bands = age_bands(age_years)
    groups = {
        name: group_figures(y[m], prob[m], threshold)
        for name, m in sex_and_band_masks(sex, bands).items()
    }
    f = group_figures(y, prob, threshold)
    return {
        "auroc": f.auroc,
        "ci95": auroc_ci95(y, prob, n_bootstrap=n_bootstrap, seed=seed),
        "n_pos": f.n_pos,
        "n": f.n,
        "sensitivity": f.sensitivity,
        "specificity": f.specificity,
        "threshold": float(threshold),
        "by_sex": {"male": groups["male"].auroc, "female": groups["female"].auroc},
        "by_age_band": {band: groups[band].auroc for band in AGE_BANDS},
        "sensitivity_ci95": f.sensitivity_ci95,
        "specificity_ci95": f.specificity_ci95,
        "ppv": f.ppv,
        "npv": f.npv,
        "ece": f.ece,
        "brier": brier(y, prob),
        "operating_point": operating_point,
        "subgroups": {
            name: {
                "n": g.n,
                "n_pos": g.n_pos,
                "auroc": g.auroc,
                "sensitivity": g.sensitivity,
                "specificity": g.specificity,
            }
            for name, g in groups.items()
        },
        "uncertainty": uncertainty_summary(y, prob, sd, threshold),
    }


def selection_metrics(
    *,
    labels: npt.NDArray[np.float32],
    probs: npt.NDArray[np.float64],
    member_probs: npt.NDArray[np.float64],
    tasks: Sequence[str],
    thresholds: dict[str, float],
    sex: npt.NDArray[np.int64],
    age_years: npt.NDArray[np.float64],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """`task_report` per task plus each member's own AUROC (for the meta at training)."""
    sd = member_probs.std(axis=1, ddof=1) if member_probs.shape[1] > 1 else None
    out: dict[str, Any] = {}
    for i, task in enumerate(tasks):
        entry = task_report(
            labels[:, i],
            probs[:, i],
            threshold=thresholds[task],
            sex=sex,
            age_years=age_years,
            n_bootstrap=n_bootstrap,
            seed=seed,
            sd=None if sd is None else sd[:, i],
        )
        entry["members_auroc"] = [
            auroc(labels[:, i], member_probs[:, m, i]) for m in range(member_probs.shape[1])
        ]
        out[task] = entry
    return out


def evaluate(
    *,
    data_dir: Path,
    folds: Sequence[int] | None,
    weights: Weights | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str | None = None,
    reliability_png_path: Path | None = None,
) -> dict[str, Any]:
    """Score every record of `folds` in `data_dir` (all when None) and report per task.
    With `reliability_png_path`, also draw the MI reliability curves there."""
    weights = weights or DEFAULT_WEIGHTS
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta = weights.meta
    model = weights.load_model(device)
    data = load_ptbxl(Path(data_dir), folds, meta.tasks)
    refused = sum(
        not assess_quality(data.signals_mv[i], data.fs_hz, LEADS_12).ok for i in range(len(data))
    )
    logger.info("quality gate would refuse %d of %d records (all are scored)", refused, len(data))
    inputs = preprocess_batch(data.signals_mv, data.fs_hz, meta.preprocess)
    member_logits, _ = predict_logits(model, inputs, device=device)
    scores = score(member_logits, meta.tasks, meta.calibration)
    mi = meta.tasks.index("mi")
    subgroups = subgroup_audit(
        data.labels[:, mi],
        scores.probs[:, mi],
        meta.thresholds["mi"],
        sex=data.sex,
        age_years=data.age_years,
        site=data.site,
        device=data.device,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    backdoor = _backdoor(data, scores.probs, meta.tasks, meta.model_version, n_bootstrap, seed)
    if reliability_png_path is not None:
        reliability_png_path.parent.mkdir(parents=True, exist_ok=True)
        reliability_png_path.write_bytes(
            reliability_png(
                data.labels[:, mi],
                scores.probs[:, mi],
                sex=data.sex,
                age_years=data.age_years,
                title=f"MI, {meta.model_version}",
            )
        )
    tasks: dict[str, Any] = {}
    for t, task in enumerate(meta.tasks):
        tasks[task] = task_report(
            data.labels[:, t],
            scores.probs[:, t],
            threshold=meta.thresholds[task],
            sex=data.sex,
            age_years=data.age_years,
            n_bootstrap=n_bootstrap,
            seed=seed,
            sd=None if scores.sd is None else scores.sd[:, t],
            operating_point=meta.operating_points.get(task),
        )
    return {
        "model_version": meta.model_version,
        "n": len(data),
        "data_dir": str(data_dir),
        "folds": None if folds is None else [int(f) for f in folds],
        "tasks": tasks,
        "calibration": {t: meta.calibrator(t).method for t in meta.tasks},
        "quality_refused": int(refused),
        "members": meta.n_members,
        "stenosis": (
            {"assessed": True, "reason": "site fine-tuned and validated"}
            if meta.stenosis_validated
            else {"assessed": False, "reason": STENOSIS_NOT_ASSESSED}
        ),
        "subgroups": subgroups,
        "fairness": fairness_gaps(subgroups),
        "backdoor": backdoor,
        "reliability_png": None if reliability_png_path is None else str(reliability_png_path),
    }


def _backdoor(
    data: PtbxlData,
    probs: npt.NDArray[np.float64],
    tasks: Sequence[str],
    model_version: str,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any] | None:
    """Unadjusted vs back-door adjusted vs Z-aware vs per-group thresholds on this data
    (records with known sex and age), with the fitted fairness model of the weights."""
    fm = load_fairness(model_version)
    if fm is None:
        return None
    mi = list(tasks).index("mi")
    bands = age_bands(data.age_years)
    known = (data.sex >= 0) & (bands != "")
    if not known.any():
        return None
    x = probs[known][:, [list(tasks).index(t) for t in fm.tasks]]
    sex, bk = data.sex[known], bands[known]
    y = data.labels[known, mi] > 0.5
    unadj = probs[known, mi]
    margin = fm.group_threshold_margin(unadj, sex, data.age_years[known])
    out = compare(
        y,
        {
            "unadjusted": (unadj, fm.shipped_threshold),
            "adjusted": (fm.adjusted(x), fm.threshold),
            "z_aware": (fm.z_aware(x, sex == 1, bk.tolist()), fm.z_aware_threshold),
            "group_thresholds": (margin, 0.0),
        },
        sex,
        bk,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    out["note"] = (
        "the shipped fairness model applied to this data as is (fitted on fold 9: on fold 9 "
        "these figures are in-sample; the model card gives the cross-fitted ones)"
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--folds", type=int, nargs="*", default=None)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--reliability-png", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = evaluate(
        data_dir=args.data_dir,
        folds=args.folds or None,
        weights=None if args.weights is None else weights_from_file(args.weights),
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        device=args.device,
        reliability_png_path=args.reliability_png,
    )
    json.dump(report, sys.stdout, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
