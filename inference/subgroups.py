"""The subgroup audit of the triage output: per sex, age band, sex x age band, site and device.

For each subgroup with at least `MIN_N` records: n, n_pos, AUROC with a percentile-bootstrap
95 % CI (None when the group holds one class), sensitivity and specificity at the shipped
operating point (with Wilson CIs), expected calibration error (10 equal-width bins), positive
rate, and ``flag_low_sensitivity`` when the group's sensitivity is more than `SENS_MARGIN`
below the overall one (judged only with at least `MIN_POS_FOR_FLAG` positives; fewer is noted
as ``too_few_positives``). Site and device groups smaller than `MIN_N` are left out and
counted in ``omitted``. `reliability_png` draws the reliability curves (overall, per sex, per
age band).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from inference.calibration import expected_calibration_error
from inference.fairness import AGE_BANDS, SEXES, band_of, cell_key
from inference.metrics import auroc, bootstrap_auroc_ci, sensitivity_specificity, wilson_ci

MIN_N = 20
MIN_POS_FOR_FLAG = 5
SENS_MARGIN = 0.05


@dataclass(frozen=True, slots=True)
class GroupFigures:
    """One group's figures at one threshold, None where undefined (an absent class, an empty
    group). Both JSON contracts report from these: `group_entry` here and the per-task entry
    of `inference.evaluate.task_report`."""

    n: int
    n_pos: int
    auroc: float | None
    sensitivity: float | None
    specificity: float | None
    #: Wilson 95 % intervals of sensitivity and specificity.
    sensitivity_ci95: list[float] | None
    specificity_ci95: list[float] | None
    ppv: float | None
    npv: float | None
    #: Expected calibration error, 10 equal-width bins.
    ece: float | None
    #: The share of the group called positive.
    positive_rate: float | None


def group_figures(
    y: npt.NDArray[np.bool_], prob: npt.NDArray[np.float64], threshold: float
) -> GroupFigures:
    """The figures of the records `y` (labels) scored `prob`, called positive at `threshold`."""
    pred = prob >= threshold
    n_pos = int(y.sum())
    n_neg = int((~y).sum())
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    sens, spec = sensitivity_specificity(y, prob, threshold)
    return GroupFigures(
        n=int(y.size),
        n_pos=n_pos,
        auroc=auroc(y, prob),
        sensitivity=sens,
        specificity=spec,
        sensitivity_ci95=wilson_ci(tp, n_pos),
        specificity_ci95=wilson_ci(tn, n_neg),
        ppv=float(tp / pred.sum()) if pred.any() else None,
        npv=float(tn / (~pred).sum()) if (~pred).any() else None,
        ece=expected_calibration_error(y, prob),
        positive_rate=float(pred.mean()) if y.size else None,
    )


def auroc_ci95(
    y: npt.NDArray[np.bool_], prob: npt.NDArray[np.float64], *, n_bootstrap: int, seed: int
) -> list[float] | None:
    """Percentile-bootstrap 95 % CI of the AUROC over records (None with one class)."""
    ci = bootstrap_auroc_ci(y, prob, n_bootstrap=n_bootstrap, seed=seed)
    return None if ci is None else [ci[0], ci[1]]


def group_entry(
    y: npt.NDArray[np.bool_],
    prob: npt.NDArray[np.float64],
    threshold: float,
    *,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    f = group_figures(y, prob, threshold)
    return {
        "n": f.n,
        "n_pos": f.n_pos,
        "auroc": f.auroc,
        "ci95": auroc_ci95(y, prob, n_bootstrap=n_bootstrap, seed=seed),
        "sensitivity": f.sensitivity,
        "sensitivity_ci95": f.sensitivity_ci95,
        "specificity": f.specificity,
        "specificity_ci95": f.specificity_ci95,
        "ece": f.ece,
        "positive_rate": f.positive_rate,
    }


def subgroup_audit(
    y_true: npt.ArrayLike,
    prob: npt.ArrayLike,
    threshold: float,
    *,
    sex: npt.NDArray[np.int64],
    age_years: npt.NDArray[np.float64],
    site: Sequence[object] | npt.NDArray[Any] | None = None,
    device: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    min_n: int = MIN_N,
) -> dict[str, Any]:
    """The ``subgroups`` block of `ecgbridge evaluate` for one task (see module docstring)."""
    y = np.asarray(y_true) > 0.5
    p = np.asarray(prob, dtype=np.float64)
    bands = band_of(age_years)
    overall = group_entry(y, p, threshold, n_bootstrap=n_bootstrap, seed=seed)
    dims: dict[str, dict[str, npt.NDArray[np.bool_]]] = {
        "sex": {s: sex == i for i, s in enumerate(SEXES)},
        "age_band": {b: bands == b for b in AGE_BANDS},
        "sex_x_age_band": {
            cell_key(s, b): (sex == i) & (bands == b)
            for i, s in enumerate(SEXES)
            for b in AGE_BANDS
        },
    }
    if site is not None:
        site_arr = np.asarray(
            ["unknown" if v != v else str(int(v)) for v in np.asarray(site, dtype=np.float64)]
        )
        dims["site"] = {v: site_arr == v for v in sorted(set(site_arr.tolist()))}
    if device is not None:
        dev = np.asarray([" ".join(str(d).split()) for d in device])
        dims["device"] = {v: dev == v for v in sorted(set(dev.tolist()))}
    out: dict[str, Any] = {"overall": overall, "threshold": float(threshold)}
    flagged: list[str] = []
    omitted: dict[str, int] = {}
    for dim, groups in dims.items():
        entries: dict[str, Any] = {}
        for name, mask in groups.items():
            n = int(mask.sum())
            if n == 0:
                continue
            if dim in ("site", "device") and n < min_n:
                omitted[dim] = omitted.get(dim, 0) + 1
                continue
            entry = group_entry(y[mask], p[mask], threshold, n_bootstrap=n_bootstrap, seed=seed)
            sens = entry["sensitivity"]
            if entry["n_pos"] < MIN_POS_FOR_FLAG:
                entry["flag_low_sensitivity"] = None
                entry["note"] = "too_few_positives"
            else:
                low = (
                    sens is not None
                    and overall["sensitivity"] is not None
                    and sens < overall["sensitivity"] - SENS_MARGIN
                )
                entry["flag_low_sensitivity"] = bool(low)
                if low:
                    flagged.append(f"{dim}:{name}")
            entries[name] = entry
        out[dim] = entries
    out["flagged"] = flagged
    out["omitted_small_groups"] = omitted
    out["min_n"] = min_n
    out["sensitivity_margin"] = SENS_MARGIN
    return out


def fairness_gaps(subgroups: Mapping[str, Any]) -> dict[str, float | None]:
    """The ``fairness`` block: AUROC and sensitivity gaps between sexes (|male - female|)
    and between age bands (largest - smallest of the defined ones)."""

    def gap(dim: str, key: str) -> float | None:
        vals = [e[key] for e in subgroups.get(dim, {}).values() if e.get(key) is not None]
        return float(max(vals) - min(vals)) if len(vals) >= 2 else None

    return {
        "auroc_gap_sex": gap("sex", "auroc"),
        "sensitivity_gap_sex": gap("sex", "sensitivity"),
        "auroc_gap_age": gap("age_band", "auroc"),
        "sensitivity_gap_age": gap("age_band", "sensitivity"),
    }


def reliability_curve(
    y: npt.NDArray[np.bool_], prob: npt.NDArray[np.float64], n_bins: int = 10
) -> tuple[list[float], list[float], list[int]]:
    """Mean predicted probability, observed rate and count per non-empty equal-width bin."""
    bins = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    mean_p, rate, count = [], [], []
    for b in range(n_bins):
        m = bins == b
        if m.any():
            mean_p.append(float(prob[m].mean()))
            rate.append(float(y[m].mean()))
            count.append(int(m.sum()))
    return mean_p, rate, count


def reliability_png(
    y_true: npt.ArrayLike,
    prob: npt.ArrayLike,
    *,
    sex: npt.NDArray[np.int64],
    age_years: npt.NDArray[np.float64],
    title: str,
) -> bytes:
    """Reliability diagram (overall, per sex, per age band) as PNG bytes."""
    y = np.asarray(y_true) > 0.5
    p = np.asarray(prob, dtype=np.float64)
    bands = band_of(age_years)
    fig = Figure(figsize=(10, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    panels: list[tuple[str, dict[str, npt.NDArray[np.bool_]]]] = [
        ("by sex", {"all": np.ones(y.shape, bool)} | {s: sex == i for i, s in enumerate(SEXES)}),
        ("by age band", {b: bands == b for b in AGE_BANDS}),
    ]
    for k, (label, groups) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
        for name, mask in groups.items():
            if mask.sum() == 0:
                continue
            mp, rate, _ = reliability_curve(y[mask], p[mask])
            ece = expected_calibration_error(y[mask], p[mask])
            ax.plot(mp, rate, marker="o", label=f"{name} (n={int(mask.sum())}, ECE {ece:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability (bin mean)")
        ax.set_ylabel("observed MI rate")
        ax.set_title(f"{title}: {label}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
