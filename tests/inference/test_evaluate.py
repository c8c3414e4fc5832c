"""The evaluation JSON contract, on the fixture directory."""

from __future__ import annotations

import json

import numpy as np

from inference.evaluate import age_bands, evaluate
from inference.labels import TASKS
from inference.registry import DEFAULT_WEIGHTS
from tests.inference.conftest import FIXTURE_DIR

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


def test_contract_on_fixture() -> None:
    report = evaluate(data_dir=FIXTURE_DIR, folds=[9], n_bootstrap=50, seed=0, device="cpu")
    assert set(report) == {"model_version", "n", "data_dir", "folds", "tasks"}
    assert report["model_version"] == DEFAULT_WEIGHTS.meta.model_version
    assert report["n"] == 8
    assert report["folds"] == [9]
    assert tuple(report["tasks"]) == TASKS
    for task, entry in report["tasks"].items():
        assert set(entry) == TASK_KEYS, task
        assert entry["n"] == 8
        assert set(entry["by_sex"]) == {"male", "female"}
        assert set(entry["by_age_band"]) == {"<40", "40-65", ">65"}
        assert entry["threshold"] == DEFAULT_WEIGHTS.meta.thresholds[task]
    mi = report["tasks"]["mi"]
    assert mi["n_pos"] == 5
    assert 0.0 <= mi["auroc"] <= 1.0
    lo, hi = mi["ci95"]
    assert lo <= mi["auroc"] <= hi
    # the one lateral positive is 41 years old: no positive over 65, so no AUROC there
    assert report["tasks"]["lateral"]["by_age_band"][">65"] is None
    json.dumps(report)


def test_age_bands() -> None:
    bands = age_bands(np.array([39.0, 40.0, 65.0, 66.0, 300.0, np.nan]))
    assert bands.tolist() == ["<40", "40-65", "40-65", ">65", ">65", ""]
