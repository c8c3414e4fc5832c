"""Train the shipped model: PTB-XL folds 1-8 to fit, fold 9 to calibrate and set thresholds.

Recipe (also written into the weights' meta, see `Recipe`): a deep ensemble of members
(`DEFAULT_MEMBER_SPECS`: three global-local networks, seeds 0-2; the 1-D ResNet and the
other imbalance strategies are available for comparison) over 10 s at 100 Hz
(`PreprocessConf`), multi-task binary cross-entropy over `HEAD_TASKS` (MI/injury, three
territories, ischaemia, five rhythms), AdamW with a one-cycle learning rate (linear in the
fraction of record visits done, so re-balanced schedules get the same curve), batch 64,
augmentation by random amplitude scaling, a random time shift with zero fill and small Gaussian
noise, and an imbalance strategy (`inference.imbalance`: none, class weighting, DRIL).

Every member is trained with its own seed (``seed + i``) and kept at its **last** epoch: the
selection fold chooses no epoch (its per-epoch AUROCs are only logged). The selection fold is
used for three things only, all in the meta: the calibration map per task
(`inference.calibration`, method chosen by cross-fitted ECE), the operating points on the
calibrated probabilities (``mi`` and ``ischemia``: the largest threshold with sensitivity >=
`TRIAGE_MIN_SENSITIVITY`; territories and rhythms: Youden's J), and the reported metrics.

Reproducible: fixed seeds for torch and numpy, deterministic algorithms, a fixed batch order,
`DEFAULT_THREADS` intra-op threads (bit-identical weights for a given thread count). One
command: ``python -m inference.train --data-dir DIR --out-dir DIR``
(or ``ecgbridge train``), defaults = the shipped recipe.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from inference.calibration import Calibrator, choose_method, compare_methods, fit_calibrator
from inference.dataset import PtbxlData, load_ptbxl
from inference.ensemble import (
    ARCHITECTURES,
    ArchConf,
    EcgEnsemble,
    build_member,
    predict_logits,
    stack_members,
)
from inference.evaluate import selection_metrics
from inference.globallocal import GlobalLocalConf
from inference.imbalance import STRATEGIES, dril_plan, epoch_plan, pos_weights
from inference.labels import HEAD_TASKS, ISCHEMIA_TASK, TASK_VESSEL
from inference.metrics import auroc, threshold_for_sensitivity, threshold_youden
from inference.model import ResNet1dConf, count_parameters
from inference.preprocess import PreprocessConf, preprocess_batch
from inference.registry import Weights, WeightsMeta, sha256_file, weights_from_file

logger = logging.getLogger(__name__)

MODEL_RELEASE = "0.2.0"
TRAIN_FOLDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
SELECT_FOLDS: tuple[int, ...] = (9,)
TRIAGE_MIN_SENSITIVITY = 0.90
#: Outputs whose operating point is "sensitivity >= TRIAGE_MIN_SENSITIVITY" (triage-like).
TRIAGE_TASKS: tuple[str, ...] = ("mi", ISCHEMIA_TASK)
#: Tasks with fewer selection positives are not used to choose the calibration method.
MIN_SELECTION_POSITIVES = 10
DEFAULT_EPOCHS = 20
#: Intra-op threads. One, not two: on the shared 2-core machine, with other jobs running, a
#: training step took 1.4 s with one thread and 4.3-5.2 s with two (OpenMP threads waiting for
#: each other when one is descheduled). Results are bit-identical for a given thread count.
DEFAULT_THREADS = 1
DEFAULT_ARCH = "globallocal"
DEFAULT_IMBALANCE = "none"
DEFAULT_MEMBERS = 3
#: The shipped ensemble, "arch:imbalance" per member (seeds 0, 1, 2): the global-local model
#: with plain training won on fold 9 (MODEL_CARD.md, "Methods compared").
DEFAULT_MEMBER_SPECS: tuple[str, ...] | None = ("globallocal:none",) * DEFAULT_MEMBERS


@dataclass(frozen=True, slots=True)
class Recipe:
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 64
    max_lr: float = 3e-3
    weight_decay: float = 1e-2
    scale_range: tuple[float, float] = (0.8, 1.2)
    max_shift_s: float = 1.0
    noise_mv: float = 0.02
    arch: str = DEFAULT_ARCH
    imbalance: str = DEFAULT_IMBALANCE
    n_members: int = DEFAULT_MEMBERS
    calibration: str = "auto"
    dril_warmup_epochs: int = 3
    tasks: tuple[str, ...] = HEAD_TASKS

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "members": self.n_members,
            "member_seeds": "seed + member index",
            "optimizer": "AdamW",
            "schedule": "one-cycle (pct_start 0.3, cosine, div 25, final div 1e4) over "
            "record visits",
            "loss": "BCEWithLogits, mean over tasks"
            + (", per-task pos_weight" if self.imbalance == "pos_weight" else ""),
            "imbalance": self.imbalance,
            "dril_warmup_epochs": self.dril_warmup_epochs if self.imbalance == "dril" else None,
            "epochs": self.epochs,
            "epoch_kept": "last",
            "batch_size": self.batch_size,
            "max_lr": self.max_lr,
            "weight_decay": self.weight_decay,
            "augment": {
                "amplitude_scale": list(self.scale_range),
                "time_shift_max_s": self.max_shift_s,
                "gaussian_noise_mv": self.noise_mv,
            },
            "calibration": self.calibration,
            "tasks": list(self.tasks),
        }


@dataclass(frozen=True)
class MemberRun:
    state: dict[str, torch.Tensor]
    history: tuple[dict[str, float], ...]
    duration_s: float


@dataclass(frozen=True)
class TrainReport:
    weights: Weights
    model_version: str
    epochs: int
    thresholds: dict[str, float]
    history: tuple[tuple[dict[str, float], ...], ...]
    duration_s: float
    #: Selection-fold logits (n, members, tasks), labels (n, tasks): for the experiments.
    selection_logits: npt.NDArray[np.float64] = field(repr=False)
    selection_labels: npt.NDArray[np.float32] = field(repr=False)
    selection_auroc: dict[str, float | None] = field(default_factory=dict)
    best_epoch: int = 0  # the kept epoch (always the last); kept for the foundation's callers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # third-party code may use the global generator
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def one_cycle_lr(frac: float, max_lr: float) -> float:
    """torch's OneCycleLR shape as a function of progress in [0, 1]."""
    frac = min(max(frac, 0.0), 1.0)
    start, end, pct = max_lr / 25.0, max_lr / 25.0 / 1e4, 0.3
    if frac <= pct:
        return start + (max_lr - start) * (1 - math.cos(math.pi * frac / pct)) / 2
    t = (frac - pct) / (1 - pct)
    return end + (max_lr - end) * (1 + math.cos(math.pi * t)) / 2


def _augment(x: torch.Tensor, recipe: Recipe, fs_hz: float, gen: torch.Generator) -> torch.Tensor:
    batch, _, n = x.shape
    lo, hi = recipe.scale_range
    scale = lo + (hi - lo) * torch.rand(batch, 1, 1, generator=gen)
    x = x * scale
    max_shift = round(recipe.max_shift_s * fs_hz)
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (batch,), generator=gen)
        idx = torch.arange(n).unsqueeze(0) - shifts.unsqueeze(1)
        valid = (idx >= 0) & (idx < n)
        idx = idx.clamp(0, n - 1)
        x = torch.gather(x, 2, idx.unsqueeze(1).expand(-1, x.shape[1], -1))
        x = x * valid.unsqueeze(1).to(x.dtype)
    return x + torch.randn(x.shape, generator=gen) * recipe.noise_mv


def arch_conf(arch: str, n_outputs: int, pconf: PreprocessConf) -> ArchConf:
    if arch == "resnet1d":
        return ResNet1dConf(n_outputs=n_outputs)
    if arch == "globallocal":
        return GlobalLocalConf(n_outputs=n_outputs, fs_hz=pconf.fs_hz, n_samples=pconf.n_samples)
    raise ValueError(f"unknown architecture {arch!r}")


def _member_logits(
    member: nn.Module, x: npt.NDArray[np.float32], device: str, batch_size: int = 256
) -> npt.NDArray[np.float64]:
    member.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            outs.append(member(xb.to(device)).double().cpu().numpy())
    return np.concatenate(outs, axis=0)


def _member_features(
    member: nn.Module, x: torch.Tensor, device: str, batch_size: int = 256
) -> npt.NDArray[np.float64]:
    member.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            feats = member.features(x[start : start + batch_size].to(device))  # type: ignore[operator]
            outs.append(feats.double().cpu().numpy())
    return np.concatenate(outs, axis=0)


def fit_member(
    *,
    conf: ArchConf,
    recipe: Recipe,
    seed: int,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_select: npt.NDArray[np.float32],
    y_select: npt.NDArray[np.float32],
    fs_hz: float,
    device: str,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> MemberRun:
    """Train one member with `seed`; keep its last epoch."""
    started = time.perf_counter()
    seed_everything(seed)
    member = build_member(conf).to(device)
    optimizer = torch.optim.AdamW(
        member.parameters(), lr=recipe.max_lr / 25.0, weight_decay=recipe.weight_decay
    )
    weight = (
        torch.from_numpy(pos_weights(y_train.numpy())).to(device)
        if recipe.imbalance == "pos_weight"
        else None
    )
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
    order_rng = np.random.default_rng(seed)
    aug_gen = torch.Generator().manual_seed(seed)
    primary = y_train[:, recipe.tasks.index("mi")].numpy()

    def clustering() -> Any:
        feats = _member_features(member, x_train, device)
        member.train()
        return dril_plan(primary, feats, seed=seed)

    schedule, total_visits = epoch_plan(
        strategy=recipe.imbalance,
        primary_labels=primary,
        epochs=recipe.epochs,
        warmup_epochs=recipe.dril_warmup_epochs,
        make_dril_plan=clustering,
        rng=order_rng,
    )
    n = x_train.shape[0]
    visits, next_eval = 0, n
    history: list[dict[str, float]] = []
    for epoch, make_order in enumerate(schedule, start=1):
        order = make_order()
        member.train()
        total = 0.0
        for start in range(0, len(order), recipe.batch_size):
            idx = torch.from_numpy(order[start : start + recipe.batch_size])
            if idx.numel() < 2:
                continue  # BatchNorm needs two samples
            lr = one_cycle_lr(visits / max(1, total_visits), recipe.max_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            xb = _augment(x_train[idx], recipe, fs_hz, aug_gen).to(device)
            loss = loss_fn(member(xb), y_train[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            visits += int(idx.numel())
            total += float(loss.detach()) * idx.numel()
        if visits >= next_eval or epoch == len(schedule):
            next_eval = (visits // n + 1) * n
            probs = _member_logits(member, x_select, device)
            entry: dict[str, float] = {
                "epoch": float(epoch),
                "visits": float(visits),
                "loss": total / max(1, len(order)),
            }
            for t, task in enumerate(recipe.tasks):
                auc = auroc(y_select[:, t], probs[:, t])
                if auc is not None:
                    entry[f"auroc_{task}"] = auc
            history.append(entry)
            logger.info(
                "seed %d epoch %d/%d loss %.4f mi %.4f",
                seed,
                epoch,
                len(schedule),
                entry["loss"],
                entry.get("auroc_mi", float("nan")),
            )
            if on_epoch is not None:
                on_epoch(entry)
    state = {k: v.detach().cpu().clone() for k, v in member.state_dict().items()}
    return MemberRun(state=state, history=tuple(history), duration_s=time.perf_counter() - started)


def operating_point(task: str, y: npt.NDArray[np.float32], prob: npt.NDArray[np.float64]) -> float:
    """The task's threshold on calibrated probabilities (rule in the module docstring),
    moved halfway down to the next lower score so that float rounding of a record that sits
    exactly on it (batch vs single inference) cannot flip the call."""
    chosen = (
        threshold_for_sensitivity(y, prob, TRIAGE_MIN_SENSITIVITY)
        if task in TRIAGE_TASKS
        else threshold_youden(y, prob)
    )
    if chosen is None:
        return 0.5
    below = prob[prob < chosen]
    return float((chosen + below.max()) / 2) if below.size else chosen


def calibrate(
    logits: npt.NDArray[np.float64],
    labels: npt.NDArray[np.float32],
    tasks: Sequence[str],
    *,
    method: str,
    seed: int,
) -> tuple[dict[str, Calibrator], str, dict[str, Any]]:
    """Fit the calibration on the ensemble-mean logits (n, tasks). ``method="auto"`` picks
    the method with the lowest cross-fitted ECE over tasks with enough positives."""
    comparison = compare_methods(logits, labels, tasks, seed=seed)
    voting = [t for i, t in enumerate(tasks) if labels[:, i].sum() >= MIN_SELECTION_POSITIVES]
    chosen = choose_method(comparison, voting or list(tasks)) if method == "auto" else method
    calibrators = {
        task: fit_calibrator(logits[:, i], labels[:, i], chosen) for i, task in enumerate(tasks)
    }
    return calibrators, chosen, comparison


def _data_summary(data: PtbxlData, folds: Sequence[int]) -> dict[str, Any]:
    return {
        "folds": list(folds),
        "n": len(data),
        "n_pos": {t: int(data.labels[:, i].sum()) for i, t in enumerate(data.tasks)},
    }


MemberSpec = tuple[str, str, int]  # architecture, imbalance strategy, seed


def member_plan(
    imbalance: str | Sequence[str],
    n_members: int,
    seed: int,
    *,
    arch: str = DEFAULT_ARCH,
    members: Sequence[str] | None = None,
) -> list[MemberSpec]:
    """(architecture, imbalance strategy, seed) per member.

    * one strategy: `n_members` members of `arch` with seeds ``seed, seed + 1, ...``;
    * a sequence of strategies: one `arch` member per entry;
    * `members` ("arch:strategy" strings, e.g. ``"globallocal:none"``): a mixed ensemble.

    The k-th member with a given (architecture, strategy) gets ``seed + k``, so each member is
    the same network that a one-member run of that architecture and strategy with `seed`
    trains (`inference.experiments.assemble` relies on it)."""
    if members is not None:
        pairs = []
        for spec in members:
            a, _, strategy = spec.partition(":")
            pairs.append((a, strategy or DEFAULT_IMBALANCE))
    elif isinstance(imbalance, str):
        pairs = [(arch, imbalance)] * n_members
    else:
        pairs = [(arch, strategy) for strategy in imbalance]
    if not pairs:
        raise ValueError("an ensemble needs at least one member")
    bad = [s for _, s in pairs if s not in STRATEGIES]
    if bad:
        raise ValueError(f"imbalance must be one of {STRATEGIES}, got {bad}")
    unknown = [a for a, _ in pairs if a not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; known: {ARCHITECTURES}")
    seen: dict[tuple[str, str], int] = {}
    plan: list[MemberSpec] = []
    for pair in pairs:
        plan.append((pair[0], pair[1], seed + seen.get(pair, 0)))
        seen[pair] = seen.get(pair, 0) + 1
    return plan


def plan_arch(plan: Sequence[MemberSpec]) -> str:
    archs = sorted({a for a, _, _ in plan})
    return archs[0] if len(archs) == 1 else "ensemble"


@dataclass(frozen=True)
class SelectionSet:
    """The preprocessed selection fold."""

    data: PtbxlData
    inputs: npt.NDArray[np.float32]
    folds: tuple[int, ...]


def train(
    *,
    data_dir: Path,
    out_dir: Path,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    device: str | None = None,
    train_folds: Sequence[int] = TRAIN_FOLDS,
    select_folds: Sequence[int] = SELECT_FOLDS,
    n_bootstrap: int = 1000,
    arch: str = DEFAULT_ARCH,
    imbalance: str | Sequence[str] = DEFAULT_IMBALANCE,
    n_members: int = DEFAULT_MEMBERS,
    calibration: str = "auto",
    num_threads: int = DEFAULT_THREADS,
    members: Sequence[str] | None = DEFAULT_MEMBER_SPECS,
) -> TrainReport:
    """Train, calibrate and write ``<out_dir>/ecgbridge-<arch>-<sha8>.pt`` + ``.json``.

    The members are `members` ("arch:strategy" each; the default is the shipped ensemble)
    or, when `members` is None, `n_members` of `arch` with `imbalance` (one strategy for all,
    or one per member). See `member_plan`."""
    started = time.perf_counter()
    plan = member_plan(imbalance, n_members, seed, arch=arch, members=members)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(num_threads)
    recipe = Recipe(
        epochs=epochs,
        arch=plan_arch(plan),
        imbalance="+".join(s for _, s, _ in plan),
        n_members=len(plan),
        calibration=calibration,
    )
    tasks = recipe.tasks
    pconf = PreprocessConf()
    confs = [arch_conf(a, len(tasks), pconf) for a, _, _ in plan]

    train_data = load_ptbxl(Path(data_dir), train_folds, tasks)
    select = load_selection(Path(data_dir), select_folds, tasks, pconf)
    x_train = torch.from_numpy(preprocess_batch(train_data.signals_mv, train_data.fs_hz, pconf))
    y_train = torch.from_numpy(train_data.labels)
    logger.info("training members %s on %s", plan, device)
    runs = [
        fit_member(
            conf=conf,
            recipe=replace(recipe, imbalance=strategy),
            seed=member_seed,
            x_train=x_train,
            y_train=y_train,
            x_select=select.inputs,
            y_select=select.data.labels,
            fs_hz=pconf.fs_hz,
            device=device,
        )
        for conf, (_, strategy, member_seed) in zip(confs, plan, strict=True)
    ]
    return release(
        runs=runs,
        plan=plan,
        confs=confs,
        recipe=recipe,
        pconf=pconf,
        select=select,
        data_dir=Path(data_dir),
        out_dir=Path(out_dir),
        train_summary=_data_summary(train_data, train_folds),
        seed=seed,
        device=device,
        num_threads=num_threads,
        n_bootstrap=n_bootstrap,
        started=started,
    )


def load_selection(
    data_dir: Path, folds: Sequence[int], tasks: Sequence[str], pconf: PreprocessConf
) -> SelectionSet:
    data = load_ptbxl(data_dir, folds, tasks)
    return SelectionSet(
        data=data, inputs=preprocess_batch(data.signals_mv, data.fs_hz, pconf), folds=tuple(folds)
    )


def release(
    *,
    runs: Sequence[MemberRun],
    plan: Sequence[MemberSpec],
    confs: Sequence[ArchConf],
    recipe: Recipe,
    pconf: PreprocessConf,
    select: SelectionSet,
    data_dir: Path,
    out_dir: Path,
    train_summary: dict[str, Any],
    seed: int,
    device: str,
    num_threads: int,
    n_bootstrap: int,
    started: float,
) -> TrainReport:
    """Members -> calibrated, thresholded, measured, hash-pinned weights in `out_dir`."""
    tasks = recipe.tasks
    y_select = select.data.labels
    select_folds = list(select.folds)
    state = stack_members([r.state for r in runs])
    ensemble = EcgEnsemble(confs)
    ensemble.load_state_dict(state)
    ensemble.to(device)
    member_logits, _ = predict_logits(ensemble, select.inputs, device=device)
    mean_logits = member_logits.mean(axis=1)
    calibrators, chosen, comparison = calibrate(
        mean_logits, y_select, tasks, method=recipe.calibration, seed=seed
    )
    probs = np.stack([calibrators[t](mean_logits[:, i]) for i, t in enumerate(tasks)], axis=1)
    member_probs = np.stack(
        [calibrators[t](member_logits[:, :, i]) for i, t in enumerate(tasks)], axis=2
    )
    thresholds = {t: operating_point(t, y_select[:, i], probs[:, i]) for i, t in enumerate(tasks)}
    metrics = selection_metrics(
        labels=y_select,
        probs=probs,
        member_probs=member_probs,
        tasks=tasks,
        thresholds=thresholds,
        sex=select.data.sex,
        age_years=select.data.age_years,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    name = f"ecgbridge-{recipe.arch}"
    n_params = [count_parameters(build_member(c)) for c in confs]
    mixed = len({type(c) for c in confs}) > 1
    weights = _write_weights(
        out_dir=out_dir,
        name=name,
        state=state,
        make_meta=lambda digest: WeightsMeta(
            model_version=f"{name}-{MODEL_RELEASE}+{digest[:8]}",
            sha256=digest,
            tasks=tasks,
            task_vessel=dict(TASK_VESSEL),
            thresholds=thresholds,
            operating_points={
                t: (
                    f"largest threshold with sensitivity >= {TRIAGE_MIN_SENSITIVITY} "
                    f"on folds {select_folds} (calibrated probability)"
                    if t in TRIAGE_TASKS
                    else f"max Youden J on folds {select_folds} (calibrated probability)"
                )
                for t in tasks
            },
            preprocess=pconf,
            architecture=confs[0],
            seed=seed,
            training_data={
                "source": "PTB-XL v1.0.3 subset (Wagner et al., Scientific Data 2020; "
                "PhysioNet; CC BY 4.0)",
                "data_dir_name": data_dir.name,
                "train": train_summary,
                "selection": _data_summary(select.data, select_folds),
            },
            recipe=recipe.to_json()
            | {
                "member_plan": [{"arch": a, "imbalance": s, "seed": sd} for a, s, sd in plan],
                "calibration_chosen": chosen,
                "device": device,
                "num_threads": num_threads,
                "torch": torch.__version__,
                "member_train_s": [round(r.duration_s, 1) for r in runs],
                "parameters_per_member": n_params,
            },
            metrics={
                "selection_folds": select_folds,
                "note": "the selection fold also fitted the calibration and the thresholds",
                "tasks": metrics,
                "calibration_methods": comparison,
                "history": [list(r.history) for r in runs],
            },
            created=datetime.now(UTC).date().isoformat(),
            format="ensemble-v1",
            n_members=len(runs),
            member_architectures=tuple(confs) if mixed else (),
            calibration=calibrators,
            uncertainty={
                "method": "ensemble-sd" if len(runs) > 1 else "none",
                "description": "standard deviation and range of the members' calibrated "
                "probabilities"
                if len(runs) > 1
                else "one member: no uncertainty estimate",
            },
        ),
    )
    report = TrainReport(
        weights=weights,
        model_version=weights.meta.model_version,
        epochs=recipe.epochs,
        thresholds=thresholds,
        history=tuple(r.history for r in runs),
        duration_s=time.perf_counter() - started,
        selection_logits=member_logits,
        selection_labels=y_select,
        selection_auroc={t: auroc(y_select[:, i], probs[:, i]) for i, t in enumerate(tasks)},
        best_epoch=int(runs[0].history[-1]["epoch"]) if runs[0].history else 0,
    )
    logger.info("wrote %s (calibration %s) in %.0f s", weights.path.name, chosen, report.duration_s)
    return report


def _write_weights(
    *,
    out_dir: Path,
    name: str,
    state: dict[str, torch.Tensor],
    make_meta: Callable[[str], WeightsMeta],
) -> Weights:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.tmp.pt"
    torch.save(state, tmp)
    digest = sha256_file(tmp)
    path = out_dir / f"{name}-{digest[:8]}.pt"
    tmp.replace(path)
    meta = make_meta(digest)
    path.with_suffix(".json").write_text(
        json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return weights_from_file(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the ecgbridge model.")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--arch", default=DEFAULT_ARCH, choices=["resnet1d", "globallocal"])
    parser.add_argument(
        "--imbalance",
        nargs="+",
        default=None,
        choices=list(STRATEGIES),
        help="one strategy for all members, or one per member",
    )
    parser.add_argument("--members", type=int, default=DEFAULT_MEMBERS)
    parser.add_argument("--calibration", default="auto")
    parser.add_argument(
        "--member",
        action="append",
        default=None,
        help="a member as arch:imbalance (repeat); default: the shipped ensemble",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = train(
        data_dir=args.data_dir,
        out_dir=args.out_dir,
        seed=args.seed,
        epochs=args.epochs,
        device=args.device,
        arch=args.arch,
        imbalance=DEFAULT_IMBALANCE
        if args.imbalance is None
        else (args.imbalance[0] if len(args.imbalance) == 1 else args.imbalance),
        n_members=args.members,
        calibration=args.calibration,
        members=args.member
        if args.member
        else (None if args.imbalance or args.arch != DEFAULT_ARCH else DEFAULT_MEMBER_SPECS),
    )
    logging.getLogger(__name__).info("done: %s", report.weights.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
