"""The method comparison behind MODEL_CARD.md: train each variant with `inference.train.train`
on folds 1-8, keep its fold-9 logits, and summarise every variant on fold 9 with the same
metrics (AUROC with bootstrap CI, paired bootstrap difference against the baseline,
sensitivity/specificity at the triage operating point, cross-fitted ECE).

``python -m inference.experiments run --name NAME --data-dir DIR [--arch ...] [--imbalance ...]
[--members N]`` trains one variant into ``var/experiments/NAME``;
``python -m inference.experiments summarize`` prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from inference.calibration import cross_fitted_ece, expected_calibration_error, fit_calibrator
from inference.fairness import AGE_BANDS
from inference.fairness import band_of as age_bands
from inference.metrics import auroc, bootstrap_auroc_ci, sensitivity_specificity
from inference.preprocess import PreprocessConf
from inference.registry import weights_from_file
from inference.train import (
    SELECT_FOLDS,
    TRAIN_FOLDS,
    MemberRun,
    MemberSpec,
    Recipe,
    TrainReport,
    arch_conf,
    load_selection,
    operating_point,
    plan_arch,
    release,
    train,
)

logger = logging.getLogger(__name__)

DEFAULT_ROOT = Path("var/experiments")


def run(
    *,
    name: str,
    data_dir: Path,
    root: Path = DEFAULT_ROOT,
    seed: int = 0,
    epochs: int = 20,
    arch: str = "globallocal",
    imbalance: str = "none",
    members: int = 1,
    train_folds: Sequence[int] = TRAIN_FOLDS,
    select_folds: Sequence[int] = SELECT_FOLDS,
    n_bootstrap: int = 200,
) -> Path:
    """Train one variant; write its weights, ``selection.npz`` and ``run.json``."""
    out = root / name
    report = train(
        data_dir=data_dir,
        out_dir=out,
        train_folds=train_folds,
        select_folds=select_folds,
        seed=seed,
        epochs=epochs,
        arch=arch,
        imbalance=imbalance,
        n_members=members,
        n_bootstrap=n_bootstrap,
        members=None,
    )
    np.savez_compressed(
        out / "selection.npz",
        logits=report.selection_logits,
        labels=report.selection_labels,
    )
    (out / "run.json").write_text(
        json.dumps(
            {
                "name": name,
                "weights": report.weights.path.name,
                "arch": arch,
                "imbalance": imbalance,
                "members": members,
                "seed": seed,
                "epochs": epochs,
                "duration_s": report.duration_s,
                "history": [list(h) for h in report.history],
            },
            indent=2,
        )
    )
    return out


def assemble(
    *,
    names: Sequence[str],
    data_dir: Path,
    out_dir: Path,
    root: Path = DEFAULT_ROOT,
    seed: int = 0,
    n_bootstrap: int = 1000,
    calibration: str = "auto",
    select_folds: Sequence[int] = SELECT_FOLDS,
) -> TrainReport:
    """Release an ensemble from one-member experiment runs without retraining them.

    Each run is the network that `train` trains for that member (same code, strategy, seed
    and thread count: bit-identical on this machine), so the result equals
    ``train(imbalance=[...the runs' strategies...])`` while reusing the compute."""
    infos = [json.loads((root / n / "run.json").read_text()) for n in names]
    epochs = {i["epochs"] for i in infos}
    if len(epochs) != 1 or any(i["members"] != 1 for i in infos):
        raise ValueError("assemble needs one-member runs of one epoch count")
    runs: list[MemberRun] = []
    plan: list[MemberSpec] = []
    train_summary: dict[str, Any] = {}
    for name, info in zip(names, infos, strict=True):
        weights = weights_from_file(root / name / info["weights"])
        weights.verify()
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
        member = {k.removeprefix("members.0."): v for k, v in state.items()}
        runs.append(
            MemberRun(
                state=member,
                history=tuple(info["history"][0]),
                duration_s=float(weights.meta.recipe["member_train_s"][0]),
            )
        )
        plan.append((info["arch"], info["imbalance"], int(info["seed"])))
        train_summary = weights.meta.training_data["train"]
        threads = int(weights.meta.recipe.get("num_threads", 1))
    recipe = Recipe(
        epochs=epochs.pop(),
        arch=plan_arch(plan),
        imbalance="+".join(s for _, s, _ in plan),
        n_members=len(plan),
        calibration=calibration,
    )
    pconf = PreprocessConf()
    confs = [arch_conf(a, len(recipe.tasks), pconf) for a, _, _ in plan]
    select = load_selection(Path(data_dir), select_folds, recipe.tasks, pconf)
    return release(
        runs=runs,
        plan=plan,
        confs=confs,
        recipe=recipe,
        pconf=pconf,
        select=select,
        data_dir=Path(data_dir),
        out_dir=Path(out_dir),
        train_summary=train_summary,
        seed=seed,
        device="cpu",
        num_threads=threads,
        n_bootstrap=n_bootstrap,
        started=time.perf_counter(),
    )


def paired_delta_ci(
    y: npt.NDArray[np.bool_],
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float] | None:
    """AUROC(a) - AUROC(b) with a paired percentile bootstrap CI over records."""
    base = auroc(y, a)
    other = auroc(y, b)
    if base is None or other is None:
        return None
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, y.size, y.size)
        da, db = auroc(y[idx], a[idx]), auroc(y[idx], b[idx])
        if da is not None and db is not None:
            deltas.append(da - db)
    lo, hi = np.quantile(deltas, [0.025, 0.975])
    return base - other, float(lo), float(hi)


def summarize_variant(
    logits: npt.NDArray[np.float64],
    labels: npt.NDArray[np.float32],
    tasks: Sequence[str],
    *,
    calibration: str = "platt",
    n_bootstrap: int = 1000,
    sex: npt.NDArray[np.int64] | None = None,
    age_years: npt.NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """Fold-9 metrics of one variant from its (n, members, tasks) logits, after Platt
    scaling fitted on the fold (monotone: the AUROC is the raw logits')."""
    mean = logits.mean(axis=1)
    out: dict[str, Any] = {}
    for i, task in enumerate(tasks):
        y = labels[:, i] > 0.5
        cal = fit_calibrator(mean[:, i], y, calibration)
        p = cal(mean[:, i])
        thr = operating_point(task, labels[:, i], p)
        sens, spec = sensitivity_specificity(y, p, thr)
        ci = bootstrap_auroc_ci(y, p, n_bootstrap=n_bootstrap)
        out[task] = {
            "auroc": auroc(y, p),
            "ci95": ci,
            "n_pos": int(y.sum()),
            "sensitivity": sens,
            "specificity": spec,
            "ece_uncalibrated": expected_calibration_error(
                y, fit_calibrator(mean[:, i], y, "none")(mean[:, i])
            ),
            "ece_cross_fitted": cross_fitted_ece(mean[:, i], y, calibration),
            "members_auroc": [auroc(y, logits[:, m, i]) for m in range(logits.shape[1])],
        }
        if sex is not None and age_years is not None:
            bands = age_bands(age_years)
            groups = {"male": sex == 0, "female": sex == 1} | {b: bands == b for b in AGE_BANDS}
            out[task]["subgroups"] = {
                g: {
                    "auroc": auroc(y[m], p[m]),
                    "sensitivity": sensitivity_specificity(y[m], p[m], thr)[0],
                    "n_pos": int(y[m].sum()),
                }
                for g, m in groups.items()
            }
    return out


def summarize(
    root: Path = DEFAULT_ROOT,
    baseline: str = "resnet_plain",
    *,
    data_dir: Path | None = None,
    ensembles: dict[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Every variant under `root` on the selection fold, with paired AUROC differences
    against `baseline` for the tasks both share, and subgroup results when `data_dir` (to
    read the fold's sex and age) is given."""
    from inference.dataset import load_ptbxl
    from inference.labels import HEAD_TASKS

    demo = None if data_dir is None else load_ptbxl(data_dir, SELECT_FOLDS)

    loaded: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float32], list[str]]] = {}
    infos: dict[str, dict[str, Any]] = {}
    for run_json in sorted(root.glob("*/run.json")):
        info = json.loads(run_json.read_text())
        with np.load(run_json.parent / "selection.npz") as npz:
            tasks = list(info.get("tasks", HEAD_TASKS))
            loaded[info["name"]] = (npz["logits"], npz["labels"], tasks)
        infos[info["name"]] = info
    for ens_name, members in (ensembles or {}).items():
        parts = [loaded[m] for m in members]
        loaded[ens_name] = (
            np.concatenate([p[0] for p in parts], axis=1),
            parts[0][1],
            parts[0][2],
        )
        infos[ens_name] = {"name": ens_name, "members": list(members), "ensemble": True}
    out: dict[str, Any] = {}
    base = loaded.get(baseline)
    for name, (logits, labels, tasks) in loaded.items():
        entry = summarize_variant(
            logits,
            labels,
            tasks,
            sex=None if demo is None else demo.sex,
            age_years=None if demo is None else demo.age_years,
        )
        if base is not None and name != baseline:
            for i, task in enumerate(tasks):
                if task not in base[2]:
                    continue
                j = base[2].index(task)
                y = labels[:, i] > 0.5
                entry[task]["delta_vs_baseline"] = paired_delta_ci(
                    y, logits.mean(axis=1)[:, i], base[0].mean(axis=1)[:, j]
                )
        out[name] = {
            "run": {k: v for k, v in infos[name].items() if k != "history"},
            "tasks": entry,
        }
    return out


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(summary: dict[str, Any], tasks: Sequence[str]) -> str:
    """The model card's method table: AUROC (95 % CI) per task, paired difference against
    the baseline for ``mi``, sensitivity / specificity at the ``mi`` operating point and the
    cross-fitted ECE of ``mi`` before and after Platt scaling."""
    head = (
        "| method | "
        + " | ".join(tasks)
        + " | mi: delta vs baseline | mi sens / spec | mi ECE raw -> Platt (cv) |"
    )
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    for name, entry in summary.items():
        t = entry["tasks"]
        cells = []
        for task in tasks:
            if task not in t:
                cells.append("n/a")
                continue
            e = t[task]
            lo, hi = e["ci95"] or (None, None)
            cells.append(f"{_fmt(e['auroc'])} ({_fmt(lo, 2)}-{_fmt(hi, 2)})")
        mi = t.get("mi", {})
        delta = mi.get("delta_vs_baseline")
        dtext = "-" if not delta else f"{delta[0]:+.3f} ({delta[1]:+.3f} to {delta[2]:+.3f})"
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {dtext} | {_fmt(mi.get('sensitivity'), 2)} / {_fmt(mi.get('specificity'), 2)}"
            + f" | {_fmt(mi.get('ece_uncalibrated'))} -> {_fmt(mi.get('ece_cross_fitted'))} |"
        )
    return "\n".join(lines) + "\n"


def markdown_subgroups(summary: dict[str, Any], task: str = "mi") -> str:
    """AUROC (and sensitivity at the operating point) of `task` by sex and age band."""
    groups = ("male", "female", "<40", "40-65", ">65")
    lines = [
        f"| method ({task}) | " + " | ".join(groups) + " |",
        "|---|" + "---:|" * len(groups),
    ]
    for name, entry in summary.items():
        sub = entry["tasks"].get(task, {}).get("subgroups")
        if not sub:
            continue
        cells = [f"{_fmt(sub[g]['auroc'])} / {_fmt(sub[g]['sensitivity'], 2)}" for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ecgbridge method comparison")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--name", required=True)
    r.add_argument("--data-dir", type=Path, required=True)
    r.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--epochs", type=int, default=20)
    r.add_argument("--arch", default="globallocal")
    r.add_argument("--imbalance", default="none")
    r.add_argument("--members", type=int, default=1)
    a = sub.add_parser("assemble")
    a.add_argument("--names", nargs="+", required=True)
    a.add_argument("--data-dir", type=Path, required=True)
    a.add_argument("--out-dir", type=Path, required=True)
    a.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    s = sub.add_parser("summarize")
    s.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    s.add_argument("--out", type=Path, default=None)
    s.add_argument("--data-dir", type=Path, default=None)
    s.add_argument(
        "--ensemble",
        action="append",
        default=[],
        help="NAME=run1,run2,...: also score the ensemble (mean logit) of these runs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cmd == "run":
        run(
            name=args.name,
            data_dir=args.data_dir,
            root=args.root,
            seed=args.seed,
            epochs=args.epochs,
            arch=args.arch,
            imbalance=args.imbalance,
            members=args.members,
        )
    elif args.cmd == "assemble":
        report = assemble(
            names=args.names, data_dir=args.data_dir, out_dir=args.out_dir, root=args.root
        )
        logger.info("released %s", report.weights.path)
    else:
        from inference.labels import HEAD_TASKS

        ensembles = {
            spec.split("=", 1)[0]: spec.split("=", 1)[1].split(",") for spec in args.ensemble
        }
        summary = summarize(args.root, data_dir=args.data_dir, ensembles=ensembles)
        text = json.dumps(summary, indent=2, default=float)
        if args.out:
            args.out.write_text(text)
        sys.stdout.write(markdown(summary, HEAD_TASKS))
        sys.stdout.write("\n" + markdown_subgroups(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
