"""Probability calibration per task, fitted on the selection fold only.

Methods (each maps a task's ensemble-mean logit z to a probability):

* ``none``: sigmoid(z);
* ``temperature``: sigmoid(z / T), one T > 0 per task (Guo et al. 2017); keeps the ranking
  and the logit's zero;
* ``platt``: sigmoid(a * z + b) (Platt 1999); also corrects a shifted base rate, which class
  weighting and re-balancing produce;
* ``isotonic``: a monotone step function of z (sklearn's `IsotonicRegression`), interpolated
  linearly between its knots. Flexible, needs more positives than the fold has for rare tasks.

All are monotone, so the AUROC does not change; the operating points are set on the
calibrated probabilities. `cross_fitted_ece` estimates the calibration error a method reaches
on data it was not fitted on (repeated 2-fold splits of the selection fold), the number the
model card reports next to the in-sample one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar

from inference.ensemble import sigmoid

METHODS: tuple[str, ...] = ("none", "temperature", "platt", "isotonic")
_EPS = 1e-6
#: Bounds keep the fits sane on tiny or separable folds: T in [0.05, 20], a in [0.05, 20].
_LOG_T_BOUNDS = (float(np.log(0.05)), float(np.log(20.0)))
_PLATT_A_BOUNDS = (0.05, 20.0)
_PLATT_B_BOUNDS = (-20.0, 20.0)


@dataclass(frozen=True, slots=True)
class Calibrator:
    """One task's calibration map; JSON round-trips through the weights' meta."""

    method: str = "none"
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, logits: npt.ArrayLike) -> npt.NDArray[np.float64]:
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "none":
            return sigmoid(z)
        if self.method == "temperature":
            return sigmoid(z / float(self.params["t"]))
        if self.method == "platt":
            return sigmoid(float(self.params["a"]) * z + float(self.params["b"]))
        if self.method == "isotonic":
            xs = np.asarray(self.params["x"], dtype=np.float64)
            ys = np.asarray(self.params["y"], dtype=np.float64)
            out: npt.NDArray[np.float64] = np.interp(z, xs, ys)
            return out
        raise ValueError(f"unknown calibration method {self.method!r}")

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, **self.params}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibrator:
        values = dict(data)
        method = str(values.pop("method"))
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        return cls(method, values)


def _nll(p: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def _fit_platt(z: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Logistic regression of y on z by Newton's method (a tiny ridge keeps separable data
    finite), clipped to the bounds."""
    x = np.stack([z, np.ones_like(z)], axis=1)
    w = np.array([1.0, 0.0])
    ridge = 1e-6 * np.eye(2)
    for _ in range(50):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y) + ridge @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        w = w - step
        w[0] = np.clip(w[0], *_PLATT_A_BOUNDS)
        w[1] = np.clip(w[1], *_PLATT_B_BOUNDS)
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def fit_calibrator(logits: npt.ArrayLike, y_true: npt.ArrayLike, method: str) -> Calibrator:
    """Fit `method` to one task's logits and 0/1 labels (identity when a class is absent)."""
    z = np.asarray(logits, dtype=np.float64)
    y = (np.asarray(y_true, dtype=np.float64) > 0.5).astype(np.float64)
    if method == "none" or y.size == 0 or y.min() == y.max():
        return Calibrator("none")
    if method == "temperature":
        res = minimize_scalar(
            lambda v: _nll(sigmoid(z / np.exp(v)), y),
            bounds=_LOG_T_BOUNDS,
            method="bounded",
        )
        return Calibrator("temperature", {"t": float(np.exp(res.x))})
    if method == "platt":
        a, b = _fit_platt(z, y)
        return Calibrator("platt", {"a": a, "b": b})
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(z, y)
        xs = np.asarray(iso.X_thresholds_, dtype=np.float64)
        ys = np.clip(np.asarray(iso.y_thresholds_, dtype=np.float64), 0.0, 1.0)
        return Calibrator("isotonic", {"x": xs.tolist(), "y": ys.tolist()})
    raise ValueError(f"unknown calibration method {method!r}")


def expected_calibration_error(
    y_true: npt.ArrayLike, prob: npt.ArrayLike, *, n_bins: int = 10
) -> float | None:
    """ECE with `n_bins` equal-width probability bins: sum over bins of
    (bin size / n) * |mean label - mean probability|. None for no records."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    if y.size == 0:
        return None
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.sum() / y.size * abs(float(y[mask].mean()) - float(p[mask].mean()))
    return float(total)


def brier(y_true: npt.ArrayLike, prob: npt.ArrayLike) -> float | None:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    return None if y.size == 0 else float(((p - y) ** 2).mean())


def cross_fitted_ece(
    logits: npt.ArrayLike,
    y_true: npt.ArrayLike,
    method: str,
    *,
    n_repeats: int = 20,
    seed: int = 0,
) -> float | None:
    """Mean out-of-sample ECE of `method` over `n_repeats` stratified 2-fold splits: fit on
    one half, score the other, both ways. None when a class is absent."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64) > 0.5
    if y.all() or not y.any():
        return None
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    eces: list[float] = []
    for _ in range(n_repeats):
        half = np.zeros(y.size, dtype=bool)
        half[rng.permutation(pos)[: pos.size // 2]] = True
        half[rng.permutation(neg)[: neg.size // 2]] = True
        for fit_mask in (half, ~half):
            cal = fit_calibrator(z[fit_mask], y[fit_mask], method)
            ece = expected_calibration_error(y[~fit_mask], cal(z[~fit_mask]))
            if ece is not None:
                eces.append(ece)
    return float(np.mean(eces)) if eces else None


def compare_methods(
    logits: npt.NDArray[np.float64],
    labels: npt.NDArray[np.float32],
    tasks: Sequence[str],
    *,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per method and task: in-sample ECE and Brier after fitting on all of the fold, and the
    cross-fitted (out-of-sample) ECE. ``logits`` is (n, tasks)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for method in methods:
        per_task: dict[str, dict[str, float | None]] = {}
        for t, task in enumerate(tasks):
            cal = fit_calibrator(logits[:, t], labels[:, t], method)
            p = cal(logits[:, t])
            per_task[task] = {
                "ece_in_sample": expected_calibration_error(labels[:, t], p),
                "brier_in_sample": brier(labels[:, t], p),
                "ece_cross_fitted": cross_fitted_ece(logits[:, t], labels[:, t], method, seed=seed),
            }
        out[method] = per_task
    return out


#: Methods `choose_method` may pick. Isotonic is compared and reported but not chosen
#: automatically: its steps tie records (the AUROC of the calibrated output moves, and
#: in-sample it rises because the fit pools the fold's own mis-ordered neighbours), and a
#: step function puts many records exactly on a threshold.
AUTO_METHODS: tuple[str, ...] = ("none", "temperature", "platt")


def choose_method(
    comparison: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    tasks: Sequence[str],
    *,
    candidates: Sequence[str] = AUTO_METHODS,
) -> str:
    """The method among `candidates` with the lowest mean cross-fitted ECE over `tasks`
    (ties: the earlier, i.e. simpler, one)."""
    best, best_score = "none", np.inf
    for method in candidates:
        if method not in comparison:
            continue
        values = [comparison[method][t]["ece_cross_fitted"] for t in tasks]
        scores = [v for v in values if v is not None]
        score = float(np.mean(scores)) if scores else np.inf
        if score < best_score - 1e-9:
            best, best_score = method, score
    return best
