"""Binary-classification metrics used by training and evaluation: AUROC (rank based, ties
averaged), percentile bootstrap confidence intervals over records, sensitivity/specificity at a
threshold, and the operating-point rules."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

FloatArray = npt.NDArray[np.float64]


def auroc(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float | None:
    """Area under the ROC curve; None when `y_true` holds one class only."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auroc_ci(
    y_true: npt.ArrayLike,
    score: npt.ArrayLike,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the AUROC, resampling records with replacement.

    Resamples that contain one class only are skipped. None when the AUROC is undefined.
    """
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    if auroc(y, s) is None or n_bootstrap <= 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, size=(n_bootstrap, y.size))
    yb = y[idx]
    ranks = rankdata(s[idx], axis=1)
    n_pos = yb.sum(axis=1)
    n_neg = y.size - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return None
    rank_sum = np.where(yb, ranks, 0.0).sum(axis=1)
    aucs = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(aucs, [alpha, 1 - alpha])
    return float(lo), float(hi)


def sensitivity_specificity(
    y_true: npt.ArrayLike, score: npt.ArrayLike, threshold: float
) -> tuple[float | None, float | None]:
    """Sensitivity and specificity of `score >= threshold` (None for an absent class)."""
    y = np.asarray(y_true, dtype=bool)
    pred = np.asarray(score, dtype=np.float64) >= threshold
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    sens = float((pred & y).sum() / n_pos) if n_pos else None
    spec = float((~pred & ~y).sum() / n_neg) if n_neg else None
    return sens, spec


def threshold_for_sensitivity(
    y_true: npt.ArrayLike, score: npt.ArrayLike, min_sensitivity: float
) -> float | None:
    """The largest threshold whose sensitivity is >= `min_sensitivity` (None without positives).

    Scores of positives sorted descending: the k-th one, k = ceil(min_sensitivity * n_pos),
    is the largest threshold catching k positives.
    """
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    pos = np.sort(s[y])[::-1]
    if pos.size == 0:
        return None
    k = max(1, int(np.ceil(min_sensitivity * pos.size - 1e-9)))
    return float(pos[k - 1])


def threshold_youden(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float | None:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (ties: larger)."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    if auroc(y, s) is None:
        return None
    best_t, best_j = 0.5, -np.inf
    for t in np.unique(s)[::-1]:
        sens, spec = sensitivity_specificity(y, s, float(t))
        assert sens is not None and spec is not None
        j = sens + spec - 1
        if j > best_j + 1e-12:
            best_t, best_j = float(t), j
    return best_t


def wilson_ci(k: int, n: int, *, z: float = 1.959964) -> list[float] | None:
    """Wilson score interval of a proportion k / n (None when n == 0)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]
