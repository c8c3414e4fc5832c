"""Calibration maps, ECE and the cross-fitted comparison."""

from __future__ import annotations

import numpy as np
import pytest

from inference.calibration import (
    METHODS,
    Calibrator,
    brier,
    choose_method,
    compare_methods,
    cross_fitted_ece,
    expected_calibration_error,
    fit_calibrator,
)
from inference.metrics import auroc


def _overconfident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits 3x too large and shifted: the true probability is sigmoid(z / 3 - 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n) * 6.0
    y = (rng.random(n) < 1 / (1 + np.exp(-(z / 3.0 - 1.0)))).astype(np.float64)
    return z, y


def test_ece_of_perfect_and_wrong_probabilities() -> None:
    y = np.array([0, 0, 1, 1], dtype=float)
    assert expected_calibration_error(y, y) == 0.0
    assert expected_calibration_error(y, 1 - y) == pytest.approx(1.0)
    assert expected_calibration_error([], []) is None
    assert brier(y, np.full(4, 0.5)) == pytest.approx(0.25)


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_fitting_reduces_ece_and_keeps_ranking(method: str) -> None:
    z, y = _overconfident()
    raw = Calibrator("none")(z)
    cal = fit_calibrator(z, y, method)
    p = cal(z)
    assert expected_calibration_error(y, p) < expected_calibration_error(y, raw)  # type: ignore[operator]
    if method != "isotonic":  # isotonic has ties, which can move the AUROC a little
        assert auroc(y, p) == pytest.approx(auroc(y, z))
    assert ((p >= 0) & (p <= 1)).all()
    assert np.all(np.diff(cal(np.linspace(-20, 20, 50))) >= -1e-12)


def test_platt_recovers_the_true_map() -> None:
    z, y = _overconfident(n=5000)
    cal = fit_calibrator(z, y, "platt")
    assert cal.params["a"] == pytest.approx(1 / 3, abs=0.06)
    assert cal.params["b"] == pytest.approx(-1.0, abs=0.2)


def test_json_round_trip_and_degenerate_inputs() -> None:
    z, y = _overconfident()
    for method in METHODS:
        cal = fit_calibrator(z, y, method)
        again = Calibrator.from_json(cal.to_json())
        np.testing.assert_allclose(again(z), cal(z))
    assert fit_calibrator(z, np.zeros_like(y), "platt").method == "none"
    with pytest.raises(ValueError, match="unknown"):
        Calibrator.from_json({"method": "magic"})
    with pytest.raises(ValueError, match="unknown"):
        fit_calibrator(z, y, "magic")
    # separable data does not blow the temperature up
    t = fit_calibrator(np.array([-1.0, 1.0]), np.array([0.0, 1.0]), "temperature").params["t"]
    assert 0.04 < t < 21


def test_cross_fitted_comparison_prefers_a_real_calibration() -> None:
    z, y = _overconfident()
    comparison = compare_methods(z[:, None], y[:, None].astype(np.float32), ["mi"], seed=0)
    assert set(comparison) == set(METHODS)
    none = comparison["none"]["mi"]["ece_cross_fitted"]
    platt = comparison["platt"]["mi"]["ece_cross_fitted"]
    assert none is not None and platt is not None and platt < none
    assert choose_method(comparison, ["mi"]) == "platt"
    assert choose_method(comparison, ["mi"], candidates=["none", "temperature"]) == "temperature"
    assert cross_fitted_ece(z, np.ones_like(y), "platt") is None
