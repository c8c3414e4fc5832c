"""Distil the counterfactual explainer into IF-THEN rules and ship them beside the weights.

    python -m inference.explain.distill --data-dir ../shared/data/ptbxl --out inference/weights/

Runs the counterfactual search (no attributions) on a deterministic random subset of the
training folds 1-8 (`--n-train`, seed `--seed`) and on every fold-9 record, fits a
``DecisionTreeClassifier`` (depth <= `--max-depth`, leaves >= `--min-leaf` records) that
predicts the explainer's first edit (`inference.explain.rules.edit_class`) from the
delineation measurements and the triage decision, measures its fidelity (agreement with the
explainer) on fold 9, and writes ``explainer-rules-<model_version>.json`` into `--out`.
Records the explainer leaves without an edit (refused, or no candidate helped) are skipped.
One torch thread (the shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from inference.analyzer import Analyzer
from inference.dataset import load_ptbxl
from inference.explain.explainer import Explainer
from inference.explain.rules import RuleTree, edit_class, feature_names, features, rules_path
from inference.record import LEADS_12, EcgRecord

logger = logging.getLogger(__name__)

TRAIN_FOLDS = (1, 2, 3, 4, 5, 6, 7, 8)
SELECTION_FOLD = 9


def collect(
    explainer: Explainer, data_dir: Path, folds: Sequence[int], n: int | None, seed: int
) -> tuple[npt.NDArray[np.float64], list[str], int]:
    """Features and first-edit classes of the explainer's choices on up to `n` records of
    `folds` (all when None); also the number of records tried."""
    data = load_ptbxl(data_dir, folds=list(folds))
    idx = np.arange(len(data))
    if n is not None and n < len(data):
        idx = np.sort(np.random.default_rng(seed).choice(len(data), size=n, replace=False))
    xs: list[npt.NDArray[np.float64]] = []
    ys: list[str] = []
    for count, i in enumerate(idx, 1):
        record = EcgRecord(
            signals_mv=np.ascontiguousarray(data.signals_mv[i]),
            lead_names=LEADS_12,
            fs_hz=data.fs_hz,
            record_id=f"ptbxl-{int(data.ecg_id[i])}",
        )
        ex = explainer.explain(record, attributions=False)
        cf = ex.counterfactual
        if cf is None or not cf.edits or ex.measurements is None:
            continue
        positive = cf.original_probability >= explainer.threshold
        xs.append(features(ex.measurements, triage_positive=positive))
        ys.append(edit_class(cf.edits[0].lead, cf.edits[0].segment))
        if count % 25 == 0:
            logger.info("folds %s: %d/%d records", list(folds), count, len(idx))
    return np.stack(xs), ys, len(idx)


def fit(
    x: npt.NDArray[np.float64], y: Sequence[str], *, max_depth: int, min_leaf: int, seed: int
) -> tuple[object, npt.NDArray[np.float64]]:
    """The fitted sklearn tree and the imputation values (training medians)."""
    from sklearn.tree import DecisionTreeClassifier

    medians = np.nanmedian(x, axis=0)
    medians = np.where(np.isfinite(medians), medians, 0.0)
    filled = np.where(np.isfinite(x), x, medians)
    tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=min_leaf, random_state=seed)
    tree.fit(filled, np.asarray(y))
    return tree, medians


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("inference/weights"))
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--min-leaf", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    analyzer = Analyzer.load(device="cpu")
    explainer = Explainer(analyzer)
    x_tr, y_tr, n_tr = collect(explainer, args.data_dir, TRAIN_FOLDS, args.n_train, args.seed)
    t_train = time.perf_counter() - t0
    x_9, y_9, n_9 = collect(explainer, args.data_dir, [SELECTION_FOLD], None, args.seed)
    tree, medians = fit(
        x_tr, y_tr, max_depth=args.max_depth, min_leaf=args.min_leaf, seed=args.seed
    )
    names = feature_names()
    rules = RuleTree.from_sklearn(
        tree, model_version=analyzer.model_version, feature_names=names, impute=medians.tolist()
    )
    pred_tr = [rules.predict(v) for v in x_tr]
    pred_9 = [rules.predict(v) for v in x_9]
    fidelity = float(np.mean([p == t for p, t in zip(pred_9, y_9, strict=True)]))
    majority = Counter(y_tr).most_common(1)[0][0]
    seconds = time.perf_counter() - t0
    info = {
        "target": "class of the counterfactual explainer's first edit (lead group + segment)",
        "fidelity_on": f"fold {SELECTION_FOLD}: {len(y_9)} records with an edit of {n_9}",
        "train": f"folds 1-8: {len(y_tr)} records with an edit of {n_tr} drawn (seed {args.seed})",
        "train_accuracy": float(np.mean([p == t for p, t in zip(pred_tr, y_tr, strict=True)])),
        "majority_class": majority,
        "majority_fidelity_fold9": float(np.mean([t == majority for t in y_9])),
        "class_counts_train": dict(Counter(y_tr)),
        "class_counts_fold9": dict(Counter(y_9)),
        "max_depth": args.max_depth,
        "min_samples_leaf": args.min_leaf,
        "seconds_explaining_train": round(t_train, 1),
        "seconds_total": round(seconds, 1),
        "command": "python -m inference.explain.distill " + " ".join(sys.argv[1:]),
    }
    rules = RuleTree(
        model_version=rules.model_version,
        feature_names=rules.feature_names,
        classes=rules.classes,
        impute=rules.impute,
        nodes=rules.nodes,
        fidelity=round(fidelity, 4),
        info=info,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = rules_path(analyzer.model_version, args.out)
    path.write_text(json.dumps(rules.to_json(), indent=2) + "\n", encoding="utf-8")
    print("\n".join(rules.rules()))
    print(f"fidelity on fold 9: {fidelity:.3f} ({len(y_9)} records); wrote {path}")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
