"""The back-door adjusted probability, the per-report check and the per-group thresholds."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference.analyzer import Analyzer
from inference.errors import ModelError
from inference.fairness import (
    AGE_BANDS,
    CELLS,
    SEXES,
    FairnessModel,
    cell_key,
    fairness_path,
    load_fairness,
    reference_positive_rates,
    threshold_for_sensitivity,
)
from inference.record import Demographics, EcgRecord, Sex
from inference.registry import DEFAULT_WEIGHTS


def _toy(**kw: object) -> FairnessModel:
    base = FairnessModel(
        model_version="toy",
        tasks=("mi",),
        x_mean=(0.0,),
        x_scale=(1.0,),
        coef_x=(1.0,),
        coef_z=(0.8, -0.5, 0.2),
        intercept=-0.1,
        reference_z={
            cell_key(s, b): w
            for (s, b), w in zip(CELLS, (0.1, 0.25, 0.15, 0.1, 0.2, 0.2), strict=True)
        },
        threshold=0.3,
        z_aware_threshold=0.3,
        shipped_threshold=0.35,
        shift_threshold=0.1,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_adjusted_is_the_reference_weighted_average_over_z() -> None:
    fm = _toy()
    p = 0.4
    expected = sum(
        fm.reference_z[cell_key(s, b)]
        * _sig(_logit(p) - 0.1 + 0.8 * (s == "female") - 0.5 * (b == "<40") + 0.2 * (b == ">65"))
        for s, b in CELLS
    )
    assert fm.adjusted(np.array([[p]]))[0] == pytest.approx(expected, abs=1e-12)
    # the Z-aware probability under the patient's own z differs from the adjusted one
    own = fm.z_aware(np.array([[p]]), [1.0], ["<40"])[0]
    assert own == pytest.approx(_sig(_logit(p) - 0.1 + 0.8 - 0.5))
    assert abs(own - expected) > 0.01


def test_check_reports_every_counterfactual_and_the_largest_shift() -> None:
    fm = _toy()
    check = fm.check(np.array([0.4]), Demographics(age_years=50, sex=Sex.FEMALE))
    assert set(check.by_demographic) == set(SEXES) | set(AGE_BANDS)
    assert check.by_demographic["female"] == pytest.approx(check.own_probability)
    assert check.by_demographic["40-65"] == pytest.approx(check.own_probability)
    shifts = {k: abs(v - check.own_probability) for k, v in check.by_demographic.items()}
    assert check.max_shift == pytest.approx(max(shifts.values()))
    assert check.max_shift_demographic == max(shifts, key=lambda k: shifts[k])
    assert check.verdict == ("demographic-sensitive" if check.max_shift >= 0.1 else "stable")
    assert check.sex == "female" and check.age_band == "40-65"
    assert check.adjusted_probability == pytest.approx(fm.adjusted(np.array([[0.4]]))[0])
    assert json.loads(json.dumps(check.to_json()))["verdict"] == check.verdict


def test_verdict_follows_the_threshold() -> None:
    demo = Demographics(age_years=70, sex=Sex.MALE)
    strict = _toy(shift_threshold=0.001).check(np.array([0.4]), demo)
    lax = _toy(shift_threshold=0.99).check(np.array([0.4]), demo)
    assert strict.verdict == "demographic-sensitive"
    assert lax.verdict == "stable"
    assert strict.max_shift == pytest.approx(lax.max_shift)


def test_unknown_demographics_are_averaged_over_the_reference() -> None:
    fm = _toy()
    check = fm.check(np.array([0.4]), Demographics())
    assert check.sex is None and check.age_band is None
    assert check.own_probability == pytest.approx(check.adjusted_probability)
    # "female" with unknown age = the female cells weighted by the reference P(age | female)
    cells = fm.by_cell(np.array([[0.4]]))[0]
    w = np.array([fm.reference_z[cell_key(s, b)] * (s == "female") for s, b in CELLS])
    assert check.by_demographic["female"] == pytest.approx(float(cells @ w / w.sum()))


def test_group_thresholds_reproduce_the_z_aware_decision_and_never_exceed_the_shipped() -> None:
    fm = _toy()
    thresholds = fm.group_thresholds()
    assert set(thresholds) == {cell_key(s, b) for s, b in CELLS}
    assert all(t <= fm.shipped_threshold + 1e-12 for t in thresholds.values())
    lowered = [k for k, t in thresholds.items() if t < fm.shipped_threshold - 1e-9]
    assert lowered, "the toy model's female coefficient must lower some thresholds"
    for key in lowered:
        sex, band = key.split("/")
        t = thresholds[key]
        for p in (t - 1e-4, t + 1e-4):
            z_aware = fm.z_aware(np.array([[p]]), [sex == "female"], [band])[0]
            assert (p >= t) == (z_aware >= fm.z_aware_threshold)
    age = {"<40": 30.0, "40-65": 50.0, ">65": 70.0}
    demo = Demographics(age_years=age[lowered[0].split("/")[1]], sex=Sex(lowered[0].split("/")[0]))
    assert fm.threshold_for(demo) == thresholds[lowered[0]]
    assert fm.threshold_for(Demographics()) == fm.shipped_threshold


def test_round_trip_and_version_checks(tmp_path: Path) -> None:
    fm = _toy()
    again = FairnessModel.from_json(json.loads(json.dumps(fm.to_json())))
    assert again.to_json() == fm.to_json()
    assert load_fairness("toy", tmp_path) is None
    path = fairness_path("other", tmp_path)
    path.write_text(json.dumps(fm.to_json()))
    with pytest.raises(ValueError, match="is for toy"):
        load_fairness("other", tmp_path)
    bad = fm.to_json() | {"format": "v0"}
    with pytest.raises(ValueError, match="unknown fairness model format"):
        FairnessModel.from_json(bad)


def test_threshold_for_sensitivity() -> None:
    y = np.array([True, True, True, True, False])
    p = np.array([0.9, 0.8, 0.3, 0.1, 0.5])
    assert threshold_for_sensitivity(y, p, 0.75) == pytest.approx(0.3)
    assert threshold_for_sensitivity(y, p, 1.0) == pytest.approx(0.1)


def test_the_shipped_fairness_model_matches_the_shipped_weights() -> None:
    fm = load_fairness(DEFAULT_WEIGHTS.meta.model_version)
    assert fm is not None
    assert fm.shipped_threshold == pytest.approx(DEFAULT_WEIGHTS.meta.thresholds["mi"])
    assert sum(fm.reference_z.values()) == pytest.approx(1.0)
    rates = reference_positive_rates()
    assert {"all", "male", "female", "<40", "40-65", ">65", "female/>65"} <= set(rates)
    assert all(0.0 <= r <= 1.0 for r in rates.values())
    # cells with fewer than 30 fold-9 records are not judged (male/<40 has 13)
    assert fm.reference_n["male/<40"] < 30 and "male/<40" not in rates
    assert "male/<40" in reference_positive_rates(min_n=1)
    # per-group thresholds only lower thresholds: no group's reference rate falls
    grouped = reference_positive_rates(group_thresholds=True)
    assert set(grouped) == set(rates)
    assert all(grouped[g] >= rates[g] for g in rates)
    assert grouped["female"] > rates["female"]
    ev = fm.evaluation
    assert {"unadjusted", "z_aware", "adjusted", "group_thresholds"} <= set(ev)
    # per-group thresholds never cost a group sensitivity on fold 9 (cross-fitted)
    for group in ("male", "female", "40-65", ">65"):
        assert (
            ev["group_thresholds"]["by_group"][group]["sensitivity"]
            >= ev["unadjusted"]["by_group"][group]["sensitivity"] - 1e-12
        )


def test_analyzer_adds_the_check_and_optionally_uses_group_thresholds(
    analyzer: Analyzer, sample_records: list[EcgRecord]
) -> None:
    record = replace(sample_records[0], demographics=Demographics(age_years=50, sex=Sex.FEMALE))
    result = analyzer.analyze(record)
    assert result.fairness is not None
    assert result.fairness.to_json()["verdict"] in ("stable", "demographic-sensitive")
    assert result.to_json()["fairness"] == result.fairness.to_json()
    assert result.triage is not None
    assert result.triage.threshold == DEFAULT_WEIGHTS.meta.thresholds["mi"]
    grouped = Analyzer.load(device="cpu", group_thresholds=True).analyze(record)
    assert grouped.triage is not None and analyzer.fairness is not None
    expected = analyzer.fairness.group_thresholds()["female/40-65"]
    assert grouped.triage.threshold == pytest.approx(expected)
    assert grouped.triage.probability == pytest.approx(result.triage.probability)


def test_group_thresholds_need_a_fitted_fairness_model() -> None:
    model = DEFAULT_WEIGHTS.load_model("cpu")
    with pytest.raises(ModelError, match="fairness_group_thresholds"):
        Analyzer(model, DEFAULT_WEIGHTS, device="cpu", fairness=None, group_thresholds=True)


def test_a_refused_record_has_no_fairness_check(
    analyzer: Analyzer, sample_records: list[EcgRecord]
) -> None:
    flat = replace(sample_records[0], signals_mv=np.zeros_like(sample_records[0].signals_mv))
    result = analyzer.analyze(flat)
    assert result.triage is None and result.fairness is None
