"""The subgroup audit: entries, flags, small groups, gaps and the reliability picture."""

from __future__ import annotations

import numpy as np
import pytest

from inference.evaluate import task_report
from inference.subgroups import (
    fairness_gaps,
    group_entry,
    group_figures,
    reliability_curve,
    reliability_png,
    subgroup_audit,
)


def _cohort() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[float], list[str]]:
    rng = np.random.default_rng(3)
    n = 400
    sex = np.repeat([0, 1], n // 2).astype(np.int64)
    age = rng.choice([30.0, 50.0, 75.0], size=n)
    y = rng.random(n) < 0.3
    # men: positives score high; women: half of the positives are missed (score low)
    prob = np.where(y, 0.8, 0.1) + rng.normal(0, 0.02, n)
    missed = (sex == 1) & y & (rng.random(n) < 0.5)
    prob[missed] = 0.1
    site = [0.0] * 390 + [7.0] * 10
    device = ["CS-12   E"] * 200 + ["AT-6 C"] * 200
    return y, np.clip(prob, 0, 1), sex, age, site, device


def test_the_low_sensitivity_group_is_flagged_and_small_sites_omitted() -> None:
    y, prob, sex, age, site, device = _cohort()
    audit = subgroup_audit(
        y, prob, 0.5, sex=sex, age_years=age, site=site, device=device, n_bootstrap=50
    )
    assert "sex:female" in audit["flagged"]
    assert "sex:male" not in audit["flagged"]
    assert audit["sex"]["female"]["flag_low_sensitivity"] is True
    assert audit["sex"]["male"]["sensitivity"] == pytest.approx(1.0)
    assert set(audit["site"]) == {"0"}  # site 7 has 10 < 20 records
    assert audit["omitted_small_groups"] == {"site": 1}
    assert set(audit["device"]) == {"CS-12 E", "AT-6 C"}  # inner spaces normalised
    assert set(audit["sex_x_age_band"]) == {
        f"{s}/{b}" for s in ("male", "female") for b in ("<40", "40-65", ">65")
    }
    female = audit["sex"]["female"]
    assert female["n"] == 200 and female["n_pos"] == int(y[sex == 1].sum())
    assert female["ci95"][0] <= female["auroc"] <= female["ci95"][1]
    assert 0 <= female["ece"] <= 1
    assert female["positive_rate"] == pytest.approx(float((prob[sex == 1] >= 0.5).mean()))
    gaps = fairness_gaps(audit)
    assert gaps["sensitivity_gap_sex"] == pytest.approx(
        audit["sex"]["male"]["sensitivity"] - audit["sex"]["female"]["sensitivity"]
    )
    gap = gaps["sensitivity_gap_sex"]
    assert gap is not None and gap > 0.3


def test_groups_with_few_positives_are_not_judged() -> None:
    y = np.array([True, False, False, False] * 10)
    entry = subgroup_audit(
        y[:8],
        np.linspace(0, 1, 8),
        0.5,
        sex=np.zeros(8, np.int64),
        age_years=np.full(8, 50.0),
        n_bootstrap=20,
    )
    assert entry["sex"]["male"]["flag_low_sensitivity"] is None
    assert entry["sex"]["male"]["note"] == "too_few_positives"


def test_group_entry_without_positives_has_no_auroc() -> None:
    e = group_entry(np.zeros(30, bool), np.linspace(0, 1, 30), 0.5, n_bootstrap=20, seed=0)
    assert e["auroc"] is None and e["ci95"] is None and e["sensitivity"] is None
    assert e["specificity"] == pytest.approx(15 / 30)


def test_the_evaluate_task_entry_and_the_audit_report_the_same_figures() -> None:
    """`task_report` (per task) and `subgroup_audit` (the triage output) report one set of
    figures per group: the same numbers wherever both contracts carry them."""
    y, prob, sex, age, _, _ = _cohort()
    audit = subgroup_audit(y, prob, 0.5, sex=sex, age_years=age, n_bootstrap=30, seed=4)
    task = task_report(
        y.astype(np.float32), prob, threshold=0.5, sex=sex, age_years=age, n_bootstrap=30, seed=4
    )
    overall = audit["overall"]
    for key in ("n", "n_pos", "auroc", "ci95", "sensitivity", "specificity", "ece"):
        assert task[key] == overall[key], key
    assert task["sensitivity_ci95"] == overall["sensitivity_ci95"]
    for dim, names in (("sex", ("male", "female")), ("age_band", ("<40", "40-65", ">65"))):
        for name in names:
            entry, sub = audit[dim][name], task["subgroups"][name]
            assert sub == {k: entry[k] for k in sub}, name
            assert (task["by_sex"] | task["by_age_band"])[name] == entry["auroc"]
    assert task["subgroups"]["female"]["sensitivity"] < task["subgroups"]["male"]["sensitivity"]


def test_group_figures_of_an_empty_group_are_undefined() -> None:
    f = group_figures(np.zeros(0, bool), np.zeros(0), 0.5)
    assert (f.n, f.n_pos) == (0, 0)
    assert f.auroc is None and f.sensitivity is None and f.specificity is None
    assert f.sensitivity_ci95 is None and f.ppv is None and f.npv is None
    assert f.ece is None and f.positive_rate is None
    some = group_figures(np.array([True, True, False, False]), np.array([0.9, 0.2, 0.7, 0.1]), 0.5)
    assert (some.ppv, some.npv, some.positive_rate) == (0.5, 0.5, 0.5)


def test_reliability_curve_and_png() -> None:
    y = np.array([0, 0, 1, 1, 1, 0], bool)
    p = np.array([0.05, 0.15, 0.95, 0.91, 0.55, 0.52])
    mean_p, rate, count = reliability_curve(y, p)
    assert sum(count) == 6
    assert rate[-1] == 1.0 and mean_p[0] == pytest.approx(0.05)
    png = reliability_png(
        y, p, sex=np.array([0, 1, 0, 1, 0, 1]), age_years=np.full(6, 50.0), title="t"
    )
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
