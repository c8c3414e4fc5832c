"""Fairness: the back-door adjusted triage probability and the per-report demographic check.

Age and sex (Z) influence both the ECG (X) and the label (Y). The back-door adjustment asks what
the model would say about this ECG in the reference population rather than for this patient's
own demographics::

    P(Y | do(X)) = sum over z of P(Y | X, z) P(z)

**The Z-aware model.** ``P(Y | X, z)`` is a logistic model over the shipped network's outputs
(the logits of its calibrated probabilities for every head: MI, the territories, ischaemia, the
rhythms) *and* z (female; age band <40 / >65 against 40-65). It sees Z while it is fitted, so
the weight it gives the ECG is the ECG's weight with Z held fixed, and Z's own share sits in
its Z coefficients. At inference it is evaluated under every z cell (2 sexes x 3 age bands) and
averaged with the reference population's P(z), the PTB-XL training folds 1-8.

It is fitted on the selection fold 9, the fold the calibration maps and operating points were
fitted on (the network's outputs on its own training folds are over-confident, so a model
stacked on them there would learn to ignore Z); its fold-9 figures are 5-fold cross-fitted,
grouped by patient, so no record is scored by a model that saw it. **Limit:** the network under
it never saw Z, so whatever it learned about sex or age from the waveform itself (QRS voltage
differs by sex) stays in X; the adjustment removes only the part of Z that acts beside the
ECG features. Training the network with Z as an input is the stronger design (MODEL_CARD.md).

**The per-report check** (`FairnessModel.check`): the Z-aware probability under the patient's
own demographics, under the other sex (own age band) and under each age band (own sex), with
any unknown demographic averaged over P(z); the largest shift from the patient's own; the
verdict ``demographic-sensitive`` when that shift reaches `FairnessModel.shift_threshold`
(else ``stable``), and whether any counterfactual crosses the adjusted model's threshold.

The fitted model is a small JSON file beside the weights
(``inference/weights/fairness-<model_version>.json``); ``python -m inference.fairness --data-dir
../shared/data/ptbxl --out inference/weights`` refits it and prints the fold-9 comparison.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.record import AGE_BANDS as AGE_BANDS
from inference.record import Demographics, Sex, age_bands_of
from inference.result import FairnessCheck

logger = logging.getLogger(__name__)

SEXES: tuple[str, ...] = ("male", "female")
CELLS: tuple[tuple[str, str], ...] = tuple((s, b) for s in SEXES for b in AGE_BANDS)
#: Default verdict threshold: a demographic counterfactual that moves the probability by ten
#: percentage points or more makes the result "demographic-sensitive".
SHIFT_THRESHOLD = 0.10
_EPS = 1e-4
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

FloatArray = npt.NDArray[np.float64]


def cell_key(sex: str, band: str) -> str:
    return f"{sex}/{band}"


#: The groups fairness is reported and monitored by: all, sex, age band, sex x age band.
GROUPS: tuple[str, ...] = ("all", *SEXES, *AGE_BANDS, *(cell_key(s, b) for s, b in CELLS))


def logit_features(probs: npt.ArrayLike) -> FloatArray:
    """The Z-aware model's X features: the logits of the calibrated probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def z_features(female: npt.ArrayLike, band: Sequence[str]) -> FloatArray:
    """(n, 3): female, age <40, age >65 (40-65 is the reference band)."""
    f = np.asarray(female, dtype=np.float64).reshape(-1)
    b = np.asarray(band).reshape(-1)
    return np.stack([f, (b == "<40").astype(np.float64), (b == ">65").astype(np.float64)], 1)


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class FairnessModel:
    """The fitted Z-aware logistic model, the reference P(z) and the verdict threshold."""

    model_version: str
    tasks: tuple[str, ...]
    x_mean: tuple[float, ...]
    x_scale: tuple[float, ...]
    coef_x: tuple[float, ...]
    #: female, age <40, age >65.
    coef_z: tuple[float, float, float]
    intercept: float
    #: P(z) of the reference population, keyed "male/<40" ...; sums to 1.
    reference_z: dict[str, float]
    #: Operating point of the adjusted probability (same fold-9 sensitivity as the shipped
    #: triage threshold).
    threshold: float
    #: Operating point of the Z-aware probability (same fold-9 sensitivity).
    z_aware_threshold: float = 0.5
    #: The shipped MI threshold on the unadjusted probability.
    shipped_threshold: float = 0.5
    shift_threshold: float = SHIFT_THRESHOLD
    #: Positive rate per monitoring group on fold 9 at the shipped triage threshold.
    reference_positive_rate: dict[str, float] = field(default_factory=dict)
    #: The same with the per-group thresholds (`group_thresholds`).
    reference_positive_rate_group_thresholds: dict[str, float] = field(default_factory=dict)
    #: Records per monitoring group behind the reference rates.
    reference_n: dict[str, int] = field(default_factory=dict)
    #: The fold-9 comparison (unadjusted / z-aware / adjusted), written by `fit`.
    evaluation: dict[str, Any] = field(default_factory=dict)
    fitted_on: dict[str, Any] = field(default_factory=dict)

    # -- scoring -------------------------------------------------------------------------
    def _x_part(self, probs: npt.ArrayLike) -> FloatArray:
        x = logit_features(np.atleast_2d(np.asarray(probs, dtype=np.float64)))
        if x.shape[1] != len(self.tasks):
            raise ValueError(f"{x.shape[1]} probabilities per row, the model has {self.tasks}")
        z = (x - np.asarray(self.x_mean)) / np.asarray(self.x_scale)
        return np.asarray(z @ np.asarray(self.coef_x) + self.intercept, dtype=np.float64)

    def z_aware(
        self, probs: npt.ArrayLike, female: npt.ArrayLike, band: Sequence[str]
    ) -> FloatArray:
        """P(Y | X, z) for each row, with that row's own z."""
        zf = z_features(female, band)
        return _sigmoid(self._x_part(probs) + zf @ np.asarray(self.coef_z))

    def by_cell(self, probs: npt.ArrayLike) -> FloatArray:
        """P(Y | X, z) for each row under each of the six `CELLS`: (n, 6)."""
        xp = self._x_part(probs)
        cz = np.array(
            [
                [
                    self.coef_z[0] * (s == "female")
                    + self.coef_z[1] * (b == "<40")
                    + self.coef_z[2] * (b == ">65")
                ]
                for s, b in CELLS
            ],
            dtype=np.float64,
        ).reshape(-1)
        return _sigmoid(xp[:, None] + cz[None, :])

    def group_thresholds(self) -> dict[str, float]:
        """Per sex x age band thresholds on the shipped (unadjusted) MI probability: where the
        Z-aware model (at its own threshold) would call positive, but never above the shipped
        threshold, so no group loses sensitivity (the `fairness_group_thresholds` setting).
        Defined for a Z-aware model over the MI probability alone (``tasks == ("mi",)``);
        empty otherwise."""
        if self.tasks != ("mi",) or self.coef_x[0] <= 0:
            return {}
        target = math.log(self.z_aware_threshold / (1.0 - self.z_aware_threshold))
        out: dict[str, float] = {}
        for s, b in CELLS:
            cz = (
                self.coef_z[0] * (s == "female")
                + self.coef_z[1] * (b == "<40")
                + self.coef_z[2] * (b == ">65")
            )
            x = (target - self.intercept - cz) / self.coef_x[0]
            logit_p = x * self.x_scale[0] + self.x_mean[0]
            derived = 1.0 / (1.0 + math.exp(-logit_p))
            out[cell_key(s, b)] = float(min(self.shipped_threshold, derived))
        return out

    def threshold_for(self, demographics: Demographics) -> float:
        """The per-group threshold of the patient's cell; the shipped one when a demographic
        is unknown or no group thresholds are defined."""
        sex = None if demographics.sex is Sex.UNKNOWN else demographics.sex.value
        band = demographics.age_band
        if sex is None or band is None:
            return self.shipped_threshold
        return self.group_thresholds().get(cell_key(sex, band), self.shipped_threshold)

    def thresholds_for(
        self, sex: npt.NDArray[np.int64], age_years: npt.NDArray[np.float64]
    ) -> FloatArray:
        """`threshold_for` per record of PTB-XL-coded arrays (sex 0/1/-1, age, 300 = >89)."""
        return np.array(
            [
                self.threshold_for(demographics_of(int(s), float(a)))
                for s, a in zip(sex, age_years, strict=True)
            ],
            dtype=np.float64,
        )

    def group_threshold_margin(
        self,
        probability: FloatArray,
        sex: npt.NDArray[np.int64],
        age_years: npt.NDArray[np.float64],
    ) -> FloatArray:
        """logit(p) - logit(the record's group threshold): the per-group-threshold decision
        as one score, positive at or above 0."""
        return logit_features(probability) - logit_features(self.thresholds_for(sex, age_years))

    def _weights(self, sex: str | None, band: str | None) -> FloatArray:
        w = np.array(
            [
                self.reference_z[cell_key(s, b)]
                if (sex is None or s == sex) and (band is None or b == band)
                else 0.0
                for s, b in CELLS
            ]
        )
        total = w.sum()
        if total <= 0:
            raise ValueError(f"no reference mass for sex={sex} band={band}")
        return np.asarray(w / total, dtype=np.float64)

    def marginal(
        self, probs: npt.ArrayLike, *, sex: str | None = None, band: str | None = None
    ) -> FloatArray:
        """P(Y | X, sex, band) with an unknown (None) demographic averaged over P(z);
        with both None this is the back-door adjusted P(Y | do(X))."""
        return np.asarray(self.by_cell(probs) @ self._weights(sex, band), dtype=np.float64)

    def adjusted(self, probs: npt.ArrayLike) -> FloatArray:
        """The back-door adjusted probability sum_z P(Y | X, z) P(z)."""
        return self.marginal(probs)

    def check(self, probs: npt.ArrayLike, demographics: Demographics) -> FairnessCheck:
        """The per-report fairness check for one record's calibrated head probabilities."""
        row = np.asarray(probs, dtype=np.float64).reshape(1, -1)
        sex = None if demographics.sex is Sex.UNKNOWN else demographics.sex.value
        band = demographics.age_band
        cells = self.by_cell(row)[0]

        def m(s: str | None, b: str | None) -> float:
            return float(cells @ self._weights(s, b))

        own = m(sex, band)
        by_demo = {s: m(s, band) for s in SEXES} | {b: m(sex, b) for b in AGE_BANDS}
        shifts = {k: v - own for k, v in by_demo.items()}
        max_key = max(shifts, key=lambda k: abs(shifts[k]))
        max_shift = abs(shifts[max_key])
        own_pos = own >= self.z_aware_threshold
        return FairnessCheck(
            adjusted_probability=m(None, None),
            own_probability=own,
            by_demographic=by_demo,
            max_shift=max_shift,
            max_shift_demographic=max_key,
            shift_threshold=self.shift_threshold,
            verdict="demographic-sensitive" if max_shift >= self.shift_threshold else "stable",
            flips_decision=any((v >= self.z_aware_threshold) != own_pos for v in by_demo.values()),
            sex=sex,
            age_band=band,
            method="backdoor-logistic-stack",
        )

    # -- persistence ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": "fairness-backdoor-v1",
            "model_version": self.model_version,
            "tasks": list(self.tasks),
            "x_mean": list(self.x_mean),
            "x_scale": list(self.x_scale),
            "coef_x": list(self.coef_x),
            "coef_z": {
                "female": self.coef_z[0],
                "age<40": self.coef_z[1],
                "age>65": self.coef_z[2],
            },
            "intercept": self.intercept,
            "reference_z": self.reference_z,
            "threshold": self.threshold,
            "z_aware_threshold": self.z_aware_threshold,
            "shipped_threshold": self.shipped_threshold,
            "shift_threshold": self.shift_threshold,
            "reference_positive_rate": self.reference_positive_rate,
            "reference_positive_rate_group_thresholds": (
                self.reference_positive_rate_group_thresholds
            ),
            "reference_n": self.reference_n,
            "group_thresholds": self.group_thresholds(),
            "evaluation": self.evaluation,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FairnessModel:
        if data.get("format") != "fairness-backdoor-v1":
            raise ValueError(f"unknown fairness model format {data.get('format')!r}")
        cz = data["coef_z"]
        ref = {str(k): float(v) for k, v in data["reference_z"].items()}
        missing = [cell_key(s, b) for s, b in CELLS if cell_key(s, b) not in ref]
        if missing:
            raise ValueError(f"reference_z lacks {missing}")
        return cls(
            model_version=str(data["model_version"]),
            tasks=tuple(str(t) for t in data["tasks"]),
            x_mean=tuple(float(v) for v in data["x_mean"]),
            x_scale=tuple(float(v) for v in data["x_scale"]),
            coef_x=tuple(float(v) for v in data["coef_x"]),
            coef_z=(float(cz["female"]), float(cz["age<40"]), float(cz["age>65"])),
            intercept=float(data["intercept"]),
            reference_z=ref,
            threshold=float(data["threshold"]),
            z_aware_threshold=float(data["z_aware_threshold"]),
            shipped_threshold=float(data["shipped_threshold"]),
            shift_threshold=float(data.get("shift_threshold", SHIFT_THRESHOLD)),
            reference_positive_rate={
                str(k): float(v) for k, v in data.get("reference_positive_rate", {}).items()
            },
            reference_positive_rate_group_thresholds={
                str(k): float(v)
                for k, v in data.get("reference_positive_rate_group_thresholds", {}).items()
            },
            reference_n={str(k): int(v) for k, v in data.get("reference_n", {}).items()},
            evaluation=dict(data.get("evaluation", {})),
            fitted_on=dict(data.get("fitted_on", {})),
        )


def fairness_path(model_version: str, directory: Path = WEIGHTS_DIR) -> Path:
    return directory / f"fairness-{model_version}.json"


def load_fairness(model_version: str, directory: Path = WEIGHTS_DIR) -> FairnessModel | None:
    """The fitted model for `model_version`, or None when none was fitted for it."""
    path = fairness_path(model_version, directory)
    if not path.is_file():
        return None
    model = FairnessModel.from_json(json.loads(path.read_text()))
    if model.model_version != model_version:
        raise ValueError(f"{path} is for {model.model_version}, not {model_version}")
    return model


#: A reference rate from fewer fold-9 records than this is too noisy to judge drift against.
MIN_REFERENCE_N = 30


def reference_positive_rates(
    model_version: str | None = None,
    *,
    group_thresholds: bool = False,
    min_n: int = MIN_REFERENCE_N,
) -> dict[str, float]:
    """Positive rate per monitoring group ("all", "male", "female", "<40", ..., "female/<40")
    of the shipped model on fold 9, under the threshold policy in use (`group_thresholds`):
    the reference the production drift monitor compares with. Groups with fewer than `min_n`
    fold-9 records are left out (counted in production, not judged). Empty when no fairness
    model is fitted for the version."""
    from inference.registry import DEFAULT_WEIGHTS

    version = model_version or DEFAULT_WEIGHTS.meta.model_version
    model = load_fairness(version)
    if model is None:
        return {}
    rates = (
        model.reference_positive_rate_group_thresholds
        if group_thresholds
        else model.reference_positive_rate
    )
    return {g: r for g, r in rates.items() if model.reference_n.get(g, 0) >= min_n}


# -- fitting and the fold-9 comparison ---------------------------------------------------


def band_of(age_years: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """Age band per record ("" when unknown); PTB-XL's 300 (over 89) falls in ">65"."""
    return age_bands_of(age_years)


def sex_and_band_masks(
    sex: npt.NDArray[np.int64], bands: npt.NDArray[np.str_]
) -> dict[str, npt.NDArray[np.bool_]]:
    """Masks of the sex groups (`SEXES`: 0 male, 1 female) then the age bands (`AGE_BANDS`)."""
    return {s: sex == i for i, s in enumerate(SEXES)} | {b: bands == b for b in AGE_BANDS}


def monitoring_groups(
    sex: npt.NDArray[np.int64], bands: npt.NDArray[np.str_]
) -> dict[str, npt.NDArray[np.bool_]]:
    """Masks of the groups the production monitor counts: all, sex, age band, sex x band."""
    groups: dict[str, npt.NDArray[np.bool_]] = {"all": np.ones(sex.shape, dtype=bool)}
    groups |= sex_and_band_masks(sex, bands)
    for si, s in enumerate(SEXES):
        for b in AGE_BANDS:
            groups[cell_key(s, b)] = (sex == si) & (bands == b)
    return groups


def reference_distribution(
    sex: npt.NDArray[np.int64], bands: npt.NDArray[np.str_]
) -> dict[str, float]:
    """P(z) over the six cells from records with known sex and age."""
    counts = {
        cell_key(s, b): float(((sex == si) & (bands == b)).sum())
        for si, s in enumerate(SEXES)
        for b in AGE_BANDS
    }
    total = sum(counts.values())
    if total <= 0:
        raise ValueError("no record with known sex and age for the reference population")
    return {k: v / total for k, v in counts.items()}


def _fit_logistic(
    x: FloatArray, y: npt.NDArray[np.bool_], c: float
) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """Standardise the X block, fit L2 logistic regression over [X, Z]; returns
    (x_mean, x_scale, coef (X then Z), intercept)."""
    from sklearn.linear_model import LogisticRegression

    n_x = x.shape[1] - 3
    mean = x[:, :n_x].mean(axis=0)
    scale = x[:, :n_x].std(axis=0)
    scale[scale < 1e-9] = 1.0
    xs = x.copy()
    xs[:, :n_x] = (x[:, :n_x] - mean) / scale
    lr = LogisticRegression(C=c, max_iter=2000)
    lr.fit(xs, y.astype(int))
    return mean, scale, np.asarray(lr.coef_[0], dtype=np.float64), float(lr.intercept_[0])


def _model(
    *,
    version: str,
    tasks: Sequence[str],
    params: tuple[FloatArray, FloatArray, FloatArray, float],
    reference_z: dict[str, float],
    threshold: float = 0.5,
) -> FairnessModel:
    mean, scale, coef, intercept = params
    n_x = len(tasks)
    return FairnessModel(
        model_version=version,
        tasks=tuple(tasks),
        x_mean=tuple(float(v) for v in mean),
        x_scale=tuple(float(v) for v in scale),
        coef_x=tuple(float(v) for v in coef[:n_x]),
        coef_z=(float(coef[n_x]), float(coef[n_x + 1]), float(coef[n_x + 2])),
        intercept=intercept,
        reference_z=reference_z,
        threshold=threshold,
    )


def threshold_for_sensitivity(
    y: npt.NDArray[np.bool_], prob: FloatArray, sensitivity: float
) -> float:
    """The highest threshold whose sensitivity on (y, prob) is at least `sensitivity`."""
    pos = np.sort(prob[y])[::-1]
    k = max(1, math.ceil(sensitivity * pos.size - 1e-9))
    return float(pos[min(k, pos.size) - 1])


def compare(
    y: npt.NDArray[np.bool_],
    scores: Mapping[str, tuple[FloatArray, float]],
    sex: npt.NDArray[np.int64],
    bands: npt.NDArray[np.str_],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per scoring: overall AUROC (95 % CI), sensitivity / specificity at its threshold, per
    sex and age band AUROC and sensitivity, and the gaps (sex: |male - female|; age: largest
    minus smallest band) with paired bootstrap 95 % CIs."""
    from inference.metrics import auroc, bootstrap_auroc_ci, sensitivity_specificity

    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, y.size, y.size) for _ in range(n_bootstrap)]

    def gaps(idx: npt.NDArray[np.int64] | None, prob: FloatArray, thr: float) -> dict[str, float]:
        yy, pp = (y, prob) if idx is None else (y[idx], prob[idx])
        ss, bb = (sex, bands) if idx is None else (sex[idx], bands[idx])
        out: dict[str, float] = {}
        au: dict[str, float] = {}
        se: dict[str, float] = {}
        for name, m in sex_and_band_masks(ss, bb).items():
            a = auroc(yy[m], pp[m])
            s, _ = sensitivity_specificity(yy[m], pp[m], thr) if m.any() else (None, None)
            if a is not None:
                au[name] = a
            if s is not None:
                se[name] = s
        if "male" in au and "female" in au:
            out["auroc_gap_sex"] = abs(au["male"] - au["female"])
        if "male" in se and "female" in se:
            out["sensitivity_gap_sex"] = abs(se["male"] - se["female"])
        ages_a = [au[b] for b in AGE_BANDS if b in au]
        ages_s = [se[b] for b in AGE_BANDS if b in se]
        if len(ages_a) >= 2:
            out["auroc_gap_age"] = max(ages_a) - min(ages_a)
        if len(ages_s) >= 2:
            out["sensitivity_gap_age"] = max(ages_s) - min(ages_s)
        return out

    def operating_point(
        yy: npt.NDArray[np.bool_], pp: FloatArray, thr: float
    ) -> dict[str, float | None]:
        sens, spec = sensitivity_specificity(yy, pp, thr)
        return {"sensitivity": sens, "specificity": spec}

    report: dict[str, Any] = {}
    for name, (prob, thr) in scores.items():
        ci = bootstrap_auroc_ci(y, prob, n_bootstrap=n_bootstrap, seed=seed)
        sens, spec = sensitivity_specificity(y, prob, thr)
        point = gaps(None, prob, thr)
        samples: dict[str, list[float]] = {k: [] for k in point}
        for idx in boots:
            for k, v in gaps(idx, prob, thr).items():
                if k in samples:
                    samples[k].append(v)
        report[name] = {
            "auroc": auroc(y, prob),
            "ci95": None if ci is None else [ci[0], ci[1]],
            "threshold": thr,
            "sensitivity": sens,
            "specificity": spec,
            "by_group": {
                g: {
                    "n": int(m.sum()),
                    "n_pos": int(y[m].sum()),
                    "auroc": auroc(y[m], prob[m]),
                    **operating_point(y[m], prob[m], thr),
                }
                for g, m in sex_and_band_masks(sex, bands).items()
            },
            "gaps": {
                k: {
                    "value": v,
                    "ci95": [
                        float(np.quantile(samples[k], 0.025)),
                        float(np.quantile(samples[k], 0.975)),
                    ]
                    if samples[k]
                    else None,
                }
                for k, v in point.items()
            },
        }
    return report


def fit(
    *,
    data_dir: Path,
    c: float = 0.5,
    n_splits: int = 5,
    seed: int = 0,
    n_bootstrap: int = 1000,
    shift_threshold: float = SHIFT_THRESHOLD,
    features: Sequence[str] | None = ("mi",),
) -> FairnessModel:
    """Fit the Z-aware model on fold 9 for the shipped weights and measure the comparison."""
    import torch
    from sklearn.model_selection import StratifiedGroupKFold

    from inference.dataset import load_ptbxl
    from inference.ensemble import predict_logits
    from inference.preprocess import preprocess_batch
    from inference.registry import DEFAULT_WEIGHTS
    from inference.scoring import score

    torch.set_num_threads(1)
    weights = DEFAULT_WEIGHTS
    meta = weights.meta
    train = load_ptbxl(Path(data_dir), list(range(1, 9)), meta.tasks)
    train_bands = band_of(train.age_years)
    reference_z = reference_distribution(train.sex, train_bands)
    data = load_ptbxl(Path(data_dir), [9], meta.tasks)
    model = weights.load_model("cpu")
    inputs = preprocess_batch(data.signals_mv, data.fs_hz, meta.preprocess)
    member_logits, _ = predict_logits(model, inputs, device="cpu")
    probs = score(member_logits, meta.tasks, meta.calibration).probs
    mi = meta.tasks.index("mi")
    y = data.labels[:, mi] > 0.5
    x_tasks = tuple(features or meta.tasks)
    probs_all = probs
    probs = probs_all[:, [meta.tasks.index(t) for t in x_tasks]]
    bands = band_of(data.age_years)
    known = (data.sex >= 0) & (bands != "")
    x_all = np.concatenate(
        [logit_features(probs), z_features(data.sex == 1, bands.tolist())], axis=1
    )
    # Cross-fitted predictions: each record scored by a model fitted without it.
    cross_own = np.full(y.size, np.nan)
    cross_adj = np.full(y.size, np.nan)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    idx_known = np.flatnonzero(known)
    folds_fitted: list[tuple[npt.NDArray[np.int64], FairnessModel]] = []
    for tr, te in splitter.split(idx_known, y[idx_known], data.patient_id[idx_known]):
        tr_i, te_i = idx_known[tr], idx_known[te]
        params = _fit_logistic(x_all[tr_i], y[tr_i], c)
        fm = _model(
            version=meta.model_version, tasks=x_tasks, params=params, reference_z=reference_z
        )
        cross_own[te_i] = fm.z_aware(probs[te_i], data.sex[te_i] == 1, bands[te_i].tolist())
        cross_adj[te_i] = fm.adjusted(probs[te_i])
        folds_fitted.append((te_i, fm))
    params = _fit_logistic(x_all[known], y[known], c)
    shipped_thr = float(meta.thresholds["mi"])
    unadj = probs_all[:, mi]
    yk, sk, bk = y[known], data.sex[known], bands[known]
    sens_target = float((unadj[known][yk] >= shipped_thr).mean())
    thr_adj = threshold_for_sensitivity(yk, cross_adj[known], sens_target)
    thr_own = threshold_for_sensitivity(yk, cross_own[known], sens_target)
    # Per-group thresholds, each record's from the fold model that did not see it.
    margin = np.full(y.size, np.nan)
    for te_i, fm in folds_fitted:
        fm_t = replace(fm, z_aware_threshold=thr_own, shipped_threshold=shipped_thr)
        margin[te_i] = fm_t.group_threshold_margin(
            unadj[te_i], data.sex[te_i], data.age_years[te_i]
        )
    evaluation = compare(
        yk,
        {
            "unadjusted": (unadj[known], shipped_thr),
            "z_aware": (cross_own[known], thr_own),
            "adjusted": (cross_adj[known], thr_adj),
            "group_thresholds": (margin[known], 0.0),
        },
        sk,
        bk,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    evaluation["note"] = (
        "fold 9; z_aware and adjusted are 5-fold cross-fitted (grouped by patient); their "
        "thresholds give the shipped threshold's fold-9 sensitivity "
        f"({sens_target:.3f}) so the gaps compare at the same operating point; "
        "group_thresholds: the shipped probability with per sex x age band thresholds "
        "(never above the shipped one), scored as logit(p) - logit(threshold) against 0"
    )
    final = _model(
        version=meta.model_version,
        tasks=x_tasks,
        params=params,
        reference_z=reference_z,
        threshold=thr_adj,
    )
    final = replace(final, z_aware_threshold=thr_own, shipped_threshold=shipped_thr)
    pos = unadj >= shipped_thr
    groups = {g: m for g, m in monitoring_groups(data.sex, bands).items() if m.sum() > 0}
    ref_rate = {g: float(pos[m].mean()) for g, m in groups.items()}
    pos_grouped = unadj >= final.thresholds_for(data.sex, data.age_years)
    ref_rate_grouped = {g: float(pos_grouped[m].mean()) for g, m in groups.items()}
    ref_n = {g: int(m.sum()) for g, m in groups.items()}
    checks = [
        final.check(probs[i], demographics_of(data.sex[i], data.age_years[i]))
        for i in range(len(data))
    ]
    shifts = np.array([c_.max_shift for c_ in checks])
    evaluation["per_report"] = {
        "median_max_shift": float(np.median(shifts)),
        "p90_max_shift": float(np.quantile(shifts, 0.9)),
        "share_demographic_sensitive": float(
            np.mean([c_.verdict == "demographic-sensitive" for c_ in checks])
        ),
        "share_flips_decision": float(np.mean([c_.flips_decision for c_ in checks])),
        "note": "the final (all of fold 9) model on fold 9: in-sample for the check",
    }
    return FairnessModel(
        model_version=final.model_version,
        tasks=final.tasks,
        x_mean=final.x_mean,
        x_scale=final.x_scale,
        coef_x=final.coef_x,
        coef_z=final.coef_z,
        intercept=final.intercept,
        reference_z=reference_z,
        threshold=thr_adj,
        z_aware_threshold=thr_own,
        shipped_threshold=shipped_thr,
        shift_threshold=shift_threshold,
        reference_positive_rate=ref_rate,
        reference_positive_rate_group_thresholds=ref_rate_grouped,
        reference_n=ref_n,
        evaluation=evaluation,
        fitted_on={
            "data": "PTB-XL subset fold 9 (selection fold); P(z) from folds 1-8",
            "n": int(known.sum()),
            "n_pos": int(yk.sum()),
            "reference_n": int(((train.sex >= 0) & (train_bands != "")).sum()),
            "regularisation_C": c,
            "cross_fit_splits": n_splits,
            "seed": seed,
        },
    )


def demographics_of(sex: int, age: float) -> Demographics:
    return Demographics(
        age_years=None if not np.isfinite(age) else min(float(age), 90.0),
        sex=Sex.MALE if sex == 0 else Sex.FEMALE if sex == 1 else Sex.UNKNOWN,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--c", type=float, default=0.5)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    model = fit(data_dir=args.data_dir, c=args.c, n_bootstrap=args.n_bootstrap)
    path = fairness_path(model.model_version, args.out)
    path.write_text(json.dumps(model.to_json(), indent=1) + "\n")
    json.dump(model.evaluation, sys.stdout, indent=1)
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
