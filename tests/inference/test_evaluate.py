"""The evaluation JSON contract, on the fixture directory."""

from __future__ import annotations

import json

import numpy as np

from inference.evaluate import evaluate, uncertainty_summary
from inference.fairness import band_of as age_bands
from inference.metrics import wilson_ci
from inference.registry import DEFAULT_WEIGHTS
from tests.inference.conftest import FIXTURE_DIR

#: The foundation's keys (stable) and the ones issue 5 added.
TASK_KEYS = {
    "auroc",
    "ci95",
    "n_pos",
    "n",
    "sensitivity",
    "specificity",
    "threshold",
    "by_sex",
    "by_age_band",
}
NEW_TASK_KEYS = {
    "sensitivity_ci95",
    "specificity_ci95",
    "ppv",
    "npv",
    "ece",
    "brier",
    "operating_point",
    "subgroups",
    "uncertainty",
}


def test_contract_on_fixture() -> None:
    report = evaluate(data_dir=FIXTURE_DIR, folds=[9], n_bootstrap=50, seed=0, device="cpu")
    meta = DEFAULT_WEIGHTS.meta
    assert {"model_version", "n", "data_dir", "folds", "tasks"} <= set(report)
    assert {"calibration", "quality_refused", "members", "stenosis"} <= set(report)
    assert report["model_version"] == meta.model_version
    assert report["n"] == 10
    assert report["folds"] == [9]
    assert tuple(report["tasks"]) == meta.tasks
    assert report["stenosis"]["assessed"] is False
    assert "not assessed" in report["stenosis"]["reason"]
    assert report["quality_refused"] == 0
    for task, entry in report["tasks"].items():
        assert set(entry) == TASK_KEYS | NEW_TASK_KEYS, task
        assert entry["n"] == 10
        assert set(entry["by_sex"]) == {"male", "female"}
        assert set(entry["by_age_band"]) == {"<40", "40-65", ">65"}
        assert set(entry["subgroups"]) == {"male", "female", "<40", "40-65", ">65"}
        assert sum(entry["subgroups"][b]["n"] for b in ("<40", "40-65", ">65")) == 10
        assert entry["threshold"] == meta.thresholds[task]
        assert 0.0 <= entry["ece"] <= 1.0 and 0.0 <= entry["brier"] <= 1.0
        # every head has both classes in the fixture, so every AUROC is defined
        assert entry["auroc"] is not None and entry["ci95"] is not None
        if meta.n_members > 1:
            assert entry["uncertainty"]["mean_sd"] >= 0.0
    mi = report["tasks"]["mi"]
    assert mi["n_pos"] == 5
    lo, hi = mi["ci95"]
    assert lo <= mi["auroc"] <= hi
    # issue 6: the subgroup audit of the triage output and the fairness gaps
    sub = report["subgroups"]
    assert set(sub["sex"]) == {"male", "female"}
    assert set(sub["age_band"]) <= {"<40", "40-65", ">65"}
    assert sum(e["n"] for e in sub["sex_x_age_band"].values()) == 10
    for entry in sub["sex"].values():
        assert {
            "auroc",
            "ci95",
            "sensitivity",
            "specificity",
            "ece",
            "positive_rate",
            "n",
            "n_pos",
        } <= set(entry)
    assert set(report["fairness"]) == {
        "auroc_gap_sex",
        "sensitivity_gap_sex",
        "auroc_gap_age",
        "sensitivity_gap_age",
    }
    assert set(report["backdoor"]) >= {"unadjusted", "adjusted", "z_aware", "group_thresholds"}
    # the lateral positives are 41 and 62 years old: no positive over 65, so no AUROC there
    assert report["tasks"]["lateral"]["by_age_band"][">65"] is None
    json.dumps(report)


def test_age_bands() -> None:
    bands = age_bands(np.array([39.0, 40.0, 65.0, 66.0, 300.0, np.nan]))
    assert bands.tolist() == ["<40", "40-65", "40-65", ">65", ">65", ""]


def test_wilson_and_uncertainty_summary() -> None:
    lo, hi = wilson_ci(48, 53)  # type: ignore[misc]
    assert 0.79 < lo < 0.81 and 0.95 < hi < 0.97
    assert wilson_ci(0, 0) is None
    y = np.array([0, 0, 1, 1, 1] * 4, dtype=bool)
    p = np.array([0.1, 0.6, 0.9, 0.4, 0.8] * 4)
    sd = np.array([0.01, 0.2, 0.01, 0.3, 0.02] * 4)
    out = uncertainty_summary(y, p, sd, 0.5)
    assert out is not None
    assert out["mean_sd_wrong"] > out["mean_sd_correct"]  # type: ignore[operator]
    assert out["auroc_most_certain_80pct"] == 1.0
    assert uncertainty_summary(y, p, None, 0.5) is None
