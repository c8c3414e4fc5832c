"""Stenosis > 70 % head: fine-tune on a hospital's own angiography labels, validate, and only
then report numbers.

No public ECG data here has angiography, so the shipped model has no stenosis head and every
report says "not assessed". A site that has angiography results can run
`finetune_from_csv` (the CLI's ``ecgbridge train --site-labels FILE.csv``):

1. The CSV (`read_site_labels`) has one row per ECG: ``ecg_file`` (path, relative to the CSV),
   ``lad_pct``, ``lcx_pct``, ``rca_pct`` (the worst stenosis of each vessel in percent, 0-100)
   and optionally ``patient_id`` (cross-validation folds are then grouped by patient).
2. The shipped trunks stay frozen; per ensemble member a linear head (3 logits: LAD, LCx, RCA
   stenosis >= `STENOSIS_PCT`) is fitted on the member's pooled features (records the quality
   gate refuses are left out and counted).
3. Validation before any claim: `n_folds`-fold cross-validation of the whole fitting procedure
   gives out-of-fold probabilities; per vessel the AUROC with a bootstrap CI, and a threshold
   with sensitivity >= 0.90 on the out-of-fold probabilities. The head counts as *validated*
   only when every vessel has at least `min_positives` positives and negatives and an AUROC CI
   lower bound >= `min_auroc_lower`.
4. The head is refitted on all records and written as new hash-pinned weights
   (``ecgbridge-<arch>-site-<site>-<sha8>.pt``) whose meta records the validation. The analyzer
   reports stenosis numbers only from weights whose meta says ``validated``; otherwise the
   report still says "not assessed".

This module opens no files other than the CSV it is given; reading ECG files is the caller's
job (`read_ecg`), so wire formats stay in `mappers` / `integration`.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from inference.ensemble import STENOSIS_VESSELS, EcgEnsemble, sigmoid
from inference.errors import EcgBridgeError
from inference.metrics import (
    auroc,
    bootstrap_auroc_ci,
    sensitivity_specificity,
    threshold_for_sensitivity,
)
from inference.preprocess import preprocess, to_model_leads
from inference.quality import assess_quality
from inference.record import LEADS_12, EcgRecord
from inference.registry import DEFAULT_WEIGHTS, Weights, sha256_file, weights_from_file

logger = logging.getLogger(__name__)

STENOSIS_PCT = 70.0
MIN_SENSITIVITY = 0.90
_COLUMNS = {"LAD": "lad_pct", "LCx": "lcx_pct", "RCA": "rca_pct"}


class SiteLabelError(EcgBridgeError, ValueError):
    """The site label CSV is malformed (CLI exit code 2; names the row and column)."""


@dataclass(frozen=True, slots=True)
class SiteLabel:
    ecg_file: Path
    stenosis_pct: tuple[float, float, float]  # LAD, LCx, RCA (`STENOSIS_VESSELS` order)
    patient_id: str | None = None


@dataclass(frozen=True)
class SiteFinetuneReport:
    weights: Weights
    validated: bool
    n: int
    n_refused: int
    metrics: dict[str, Any]
    reasons: tuple[str, ...]


def read_site_labels(path: Path) -> list[SiteLabel]:
    """Parse the site label CSV (see the module docstring). Paths are resolved against the
    CSV's folder. Raises `SiteLabelError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SiteLabelError(f"cannot read {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    missing = [c for c in ("ecg_file", *_COLUMNS.values()) if c not in fields]
    if missing:
        raise SiteLabelError(f"{path.name}: missing column(s) {', '.join(missing)}")
    out: list[SiteLabel] = []
    for line, row in enumerate(reader, start=2):
        values: list[float] = []
        for vessel in STENOSIS_VESSELS:
            col = fields[_COLUMNS[vessel]]
            try:
                value = float(row[col])
            except (TypeError, ValueError):
                raise SiteLabelError(
                    f"{path.name} line {line}: {_COLUMNS[vessel]} {row[col]!r} is not a number"
                ) from None
            if not 0.0 <= value <= 100.0:
                raise SiteLabelError(
                    f"{path.name} line {line}: {_COLUMNS[vessel]} {value} is outside 0-100"
                )
            values.append(value)
        name = (row[fields["ecg_file"]] or "").strip()
        if not name:
            raise SiteLabelError(f"{path.name} line {line}: empty ecg_file")
        pid_col = fields.get("patient_id")
        pid = (row[pid_col] or "").strip() or None if pid_col else None
        out.append(SiteLabel(path.parent / name, (values[0], values[1], values[2]), pid))
    if not out:
        raise SiteLabelError(f"{path.name}: no rows")
    return out


def _member_features(
    model: EcgEnsemble, x: npt.NDArray[np.float32], device: str, batch_size: int = 256
) -> list[npt.NDArray[np.float64]]:
    """Each member's pooled features (n, F), in batches on `device`."""
    model.eval()
    out: list[list[npt.NDArray[np.float64]]] = [[] for _ in range(model.n_members)]
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            xt = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
            for i in range(model.n_members):
                out[i].append(model.member(i).features(xt).double().cpu().numpy())
    return [np.concatenate(parts, axis=0) for parts in out]


def _fit_head(
    feats: npt.NDArray[np.float64], y: npt.NDArray[np.float64], *, seed: int, steps: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """L2-regularised logistic regression (3 outputs) on standardised features; returns the
    weight (3, F) and bias (3,) in the raw feature space."""
    mu = feats.mean(axis=0)
    sigma = feats.std(axis=0) + 1e-6
    z = torch.from_numpy((feats - mu) / sigma).float()
    target = torch.from_numpy(y).float()
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(z.shape[1], y.shape[1])
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.01)
        layer.bias.zero_()
    opt = torch.optim.Adam(layer.parameters(), lr=0.01, weight_decay=0.0)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(layer(z), target) + 1e-2 * layer.weight.pow(2).sum()
        loss.backward()
        opt.step()
    w = layer.weight.detach().double().numpy() / sigma
    b = layer.bias.detach().double().numpy() - w @ mu
    return w, b


def _predict(
    heads: Sequence[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]],
    feats: Sequence[npt.NDArray[np.float64]],
) -> npt.NDArray[np.float64]:
    logits = np.stack([f @ w.T + b for (w, b), f in zip(heads, feats, strict=True)], axis=1)
    return sigmoid(logits.mean(axis=1))


def _folds(n: int, groups: Sequence[str] | None, n_folds: int, seed: int) -> npt.NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    unique = sorted(set(keys))
    perm = rng.permutation(len(unique))
    fold_of = {unique[i]: int(perm[i] % n_folds) for i in range(len(unique))}
    return np.array([fold_of[k] for k in keys], dtype=np.int64)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "site"


def finetune(
    *,
    records: Sequence[EcgRecord],
    stenosis_pct: npt.ArrayLike,
    out_dir: Path,
    weights: Weights | None = None,
    site: str = "site",
    patient_ids: Sequence[str | None] | None = None,
    seed: int = 0,
    steps: int = 300,
    n_folds: int = 5,
    min_positives: int = 20,
    min_auroc_lower: float = 0.6,
    n_bootstrap: int = 1000,
    device: str = "cpu",
) -> SiteFinetuneReport:
    """Fit, cross-validate and write stenosis-head weights (see the module docstring)."""
    weights = weights or DEFAULT_WEIGHTS
    pct = np.asarray(stenosis_pct, dtype=np.float64)
    if pct.shape != (len(records), len(STENOSIS_VESSELS)):
        raise SiteLabelError(f"stenosis_pct must be ({len(records)}, 3), got {pct.shape}")
    meta = weights.meta
    model = weights.load_model(device)
    keep: list[int] = []
    inputs: list[npt.NDArray[np.float32]] = []
    for i, record in enumerate(records):
        leads = to_model_leads(record)
        if assess_quality(leads, record.fs_hz, LEADS_12).ok:
            keep.append(i)
            inputs.append(preprocess(leads, record.fs_hz, meta.preprocess))
    n_refused = len(records) - len(keep)
    if len(keep) < 2 * n_folds:
        raise SiteLabelError(f"{len(keep)} usable ECGs: too few to fit and validate")
    y = (pct[keep] >= STENOSIS_PCT).astype(np.float64)
    feats = _member_features(model, np.stack(inputs), device)
    groups = None if patient_ids is None else [str(patient_ids[i] or i) for i in keep]
    fold = _folds(len(keep), groups, n_folds, seed)
    oof = np.zeros_like(y)
    for k in range(n_folds):
        tr, te = fold != k, fold == k
        if not te.any() or not tr.any():
            continue
        heads = [_fit_head(f[tr], y[tr], seed=seed, steps=steps) for f in feats]
        oof[te] = _predict(heads, [f[te] for f in feats])
    metrics: dict[str, Any] = {}
    reasons: list[str] = []
    thresholds: dict[str, float] = {}
    for j, vessel in enumerate(STENOSIS_VESSELS):
        yv = y[:, j] > 0.5
        n_pos, n_neg = int(yv.sum()), int((~yv).sum())
        auc = auroc(yv, oof[:, j])
        ci = bootstrap_auroc_ci(yv, oof[:, j], n_bootstrap=n_bootstrap, seed=seed)
        thr = threshold_for_sensitivity(yv, oof[:, j], MIN_SENSITIVITY)
        thresholds[vessel] = 0.5 if thr is None else thr
        sens, spec = sensitivity_specificity(yv, oof[:, j], thresholds[vessel])
        metrics[vessel] = {
            "n": int(yv.size),
            "n_pos": n_pos,
            "auroc_cv": auc,
            "ci95": None if ci is None else list(ci),
            "threshold": thresholds[vessel],
            "sensitivity_cv": sens,
            "specificity_cv": spec,
        }
        if min(n_pos, n_neg) < min_positives:
            reasons.append(f"{vessel}: {n_pos} positives / {n_neg} negatives < {min_positives}")
        elif ci is None or ci[0] < min_auroc_lower:
            reasons.append(f"{vessel}: AUROC CI lower bound below {min_auroc_lower}")
    validated = not reasons
    final = [_fit_head(f, y, seed=seed, steps=steps) for f in feats]
    heads_module = model.add_stenosis_heads()
    with torch.no_grad():
        for layer, (w, b) in zip(heads_module, final, strict=True):
            assert isinstance(layer, nn.Linear)
            layer.weight.copy_(torch.from_numpy(w).float())
            layer.bias.copy_(torch.from_numpy(b).float())
    name = f"ecgbridge-{meta.arch}-site-{_slug(site)}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.tmp.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    digest = sha256_file(tmp)
    path = out_dir / f"{name}-{digest[:8]}.pt"
    tmp.replace(path)
    release = meta.model_version.rsplit("+", 1)[0]
    new_meta = replace(
        meta,
        model_version=f"{release}-site-{_slug(site)}+{digest[:8]}",
        sha256=digest,
        format="ensemble-v1",
        stenosis={
            "validated": validated,
            "site": site,
            "label_rule": f"stenosis >= {STENOSIS_PCT:g} % per vessel",
            "n": len(keep),
            "n_refused_by_quality_gate": n_refused,
            "validation": f"{n_folds}-fold cross-validation"
            + (" grouped by patient" if groups is not None else ""),
            "min_positives": min_positives,
            "min_auroc_lower": min_auroc_lower,
            "metrics": metrics,
            "thresholds": thresholds,
            "not_validated_because": reasons,
            "base_model_version": meta.model_version,
            "created": datetime.now(UTC).date().isoformat(),
        },
    )
    path.with_suffix(".json").write_text(
        json.dumps(new_meta.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    logger.info(
        "site stenosis head %s: validated=%s (%s)", path.name, validated, "; ".join(reasons)
    )
    return SiteFinetuneReport(
        weights=weights_from_file(path),
        validated=validated,
        n=len(keep),
        n_refused=n_refused,
        metrics=metrics,
        reasons=tuple(reasons),
    )


def finetune_from_csv(
    labels_csv: Path,
    *,
    read_ecg: Callable[[Path], EcgRecord],
    out_dir: Path,
    weights: Weights | None = None,
    site: str | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> SiteFinetuneReport:
    """`read_site_labels` + `read_ecg` per row + `finetune`. ``site`` defaults to the CSV's
    stem. Extra keyword arguments go to `finetune`."""
    labels = read_site_labels(labels_csv)
    records = [read_ecg(label.ecg_file) for label in labels]
    return finetune(
        records=records,
        stenosis_pct=np.array([label.stenosis_pct for label in labels]),
        patient_ids=[label.patient_id for label in labels]
        if any(label.patient_id for label in labels)
        else None,
        out_dir=out_dir,
        weights=weights,
        site=site or Path(labels_csv).stem,
        seed=seed,
        **kwargs,
    )
