"""Train the shipped model: PTB-XL folds 1-8 to fit, fold 9 to select and set thresholds.

Recipe (also written into the weights' meta): `ResNet1d` on 10 s at 100 Hz
(`PreprocessConf`), multi-task binary cross-entropy over `TASKS`, AdamW with a one-cycle
learning-rate schedule, batch 64, augmentation by random amplitude scaling, a random time
shift with zero fill and small Gaussian noise. After every epoch the model is scored on the
selection fold; the epoch with the best mean AUROC over the tasks with at least
`MIN_SELECTION_POSITIVES` positives there is kept (lateral, with 2 fold-9 positives, does not
vote). Operating points on the selection fold only: triage (``mi``) gets the largest threshold
with sensitivity >= `TRIAGE_MIN_SENSITIVITY`; each territory the threshold maximising Youden's J.

Reproducible: fixed seed for torch and numpy, deterministic algorithms, a single-threaded
batch order, 2 intra-op threads. Command line:
``python -m inference.train --data-dir DIR --out-dir DIR [--epochs N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from inference.dataset import PtbxlData, load_ptbxl
from inference.evaluate import task_report
from inference.labels import TASK_VESSEL, TASKS
from inference.metrics import auroc, threshold_for_sensitivity, threshold_youden
from inference.model import ResNet1d, ResNet1dConf, count_parameters, predict_proba
from inference.preprocess import PreprocessConf, preprocess_batch
from inference.registry import Weights, WeightsMeta, sha256_file, weights_from_file

logger = logging.getLogger(__name__)

MODEL_NAME = "ecgbridge-resnet1d"
MODEL_RELEASE = "0.1.0"
TRAIN_FOLDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
SELECT_FOLDS: tuple[int, ...] = (9,)
TRIAGE_MIN_SENSITIVITY = 0.90
MIN_SELECTION_POSITIVES = 10
DEFAULT_EPOCHS = 30


@dataclass(frozen=True, slots=True)
class Recipe:
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 64
    max_lr: float = 3e-3
    weight_decay: float = 1e-2
    scale_range: tuple[float, float] = (0.8, 1.2)
    max_shift_s: float = 1.0
    noise_mv: float = 0.02

    def to_json(self) -> dict[str, Any]:
        return {
            "optimizer": "AdamW",
            "schedule": "OneCycleLR",
            "loss": "BCEWithLogits, mean over tasks",
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "max_lr": self.max_lr,
            "weight_decay": self.weight_decay,
            "augment": {
                "amplitude_scale": list(self.scale_range),
                "time_shift_max_s": self.max_shift_s,
                "gaussian_noise_mv": self.noise_mv,
            },
            "selection": "best epoch by mean selection-fold AUROC over tasks with "
            f">= {MIN_SELECTION_POSITIVES} positives",
        }


@dataclass(frozen=True)
class TrainReport:
    weights: Weights
    model_version: str
    best_epoch: int
    epochs: int
    selection_auroc: dict[str, float | None]
    thresholds: dict[str, float]
    history: tuple[dict[str, float], ...]
    duration_s: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # third-party code may use the global generator
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def _augment(x: torch.Tensor, recipe: Recipe, fs_hz: float, gen: torch.Generator) -> torch.Tensor:
    batch, _, n = x.shape
    lo, hi = recipe.scale_range
    scale = lo + (hi - lo) * torch.rand(batch, 1, 1, generator=gen)
    x = x * scale.to(x.device)
    max_shift = round(recipe.max_shift_s * fs_hz)
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (batch,), generator=gen)
        idx = torch.arange(n).unsqueeze(0) - shifts.unsqueeze(1)
        valid = (idx >= 0) & (idx < n)
        idx = idx.clamp(0, n - 1).to(x.device)
        x = torch.gather(x, 2, idx.unsqueeze(1).expand(-1, x.shape[1], -1))
        x = x * valid.unsqueeze(1).to(x.device, x.dtype)
    noise = torch.randn(x.shape, generator=gen) * recipe.noise_mv
    return x + noise.to(x.device)


def _aurocs(
    labels: npt.NDArray[np.float32], probs: npt.NDArray[np.float64]
) -> dict[str, float | None]:
    return {task: auroc(labels[:, t], probs[:, t]) for t, task in enumerate(TASKS)}


def _selection_score(aucs: dict[str, float | None], labels: npt.NDArray[np.float32]) -> float:
    """Mean AUROC over tasks with >= MIN_SELECTION_POSITIVES positives (``mi`` alone if none)."""
    voting = [
        auc
        for t, task in enumerate(TASKS)
        if (auc := aucs[task]) is not None and labels[:, t].sum() >= MIN_SELECTION_POSITIVES
    ]
    if not voting:
        voting = [aucs["mi"] or 0.0]
    return float(np.mean(voting))


def _data_summary(data: PtbxlData, folds: Sequence[int]) -> dict[str, Any]:
    return {
        "folds": list(folds),
        "n": len(data),
        "n_pos": {t: int(data.labels[:, i].sum()) for i, t in enumerate(data.tasks)},
    }


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
) -> TrainReport:
    """Train, select and write ``<out_dir>/ecgbridge-resnet1d-<sha8>.pt`` + ``.json``."""
    started = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(2)
    seed_everything(seed)
    recipe = Recipe(epochs=epochs)
    pconf = PreprocessConf()
    arch = ResNet1dConf(n_outputs=len(TASKS))

    train_data = load_ptbxl(Path(data_dir), train_folds)
    select_data = load_ptbxl(Path(data_dir), select_folds)
    x_train = torch.from_numpy(preprocess_batch(train_data.signals_mv, train_data.fs_hz, pconf))
    y_train = torch.from_numpy(train_data.labels)
    x_select = preprocess_batch(select_data.signals_mv, select_data.fs_hz, pconf)
    y_select = select_data.labels

    model = ResNet1d(arch).to(device)
    logger.info("training %s (%d parameters) on %s", MODEL_NAME, count_parameters(model), device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.max_lr, weight_decay=recipe.weight_decay
    )
    steps_per_epoch = max(1, -(-len(train_data) // recipe.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.BCEWithLogitsLoss()
    order_rng = np.random.default_rng(seed)
    aug_gen = torch.Generator().manual_seed(seed)

    best_score, best_epoch = -1.0, 0
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = order_rng.permutation(len(train_data))
        total = 0.0
        for start in range(0, len(order), recipe.batch_size):
            idx = torch.from_numpy(order[start : start + recipe.batch_size])
            if idx.numel() < 2:
                continue  # BatchNorm needs two samples
            xb = _augment(x_train[idx], recipe, pconf.fs_hz, aug_gen).to(device)
            loss = loss_fn(model(xb), y_train[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * idx.numel()
        aucs = _aurocs(y_select, predict_proba(model, x_select, device=device))
        score = _selection_score(aucs, y_select)
        history.append(
            {"epoch": epoch, "loss": total / len(order), "score": score}
            | {f"auroc_{k}": v for k, v in aucs.items() if v is not None}
        )
        logger.info(
            "epoch %d loss %.4f selection score %.4f %s",
            epoch,
            total / len(order),
            score,
            {k: None if v is None else round(v, 4) for k, v in aucs.items()},
        )
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())

    model.load_state_dict(best_state)
    probs = predict_proba(model, x_select, device=device)
    thresholds: dict[str, float] = {}
    for t, task in enumerate(TASKS):
        if task == "mi":
            chosen = threshold_for_sensitivity(y_select[:, t], probs[:, t], TRIAGE_MIN_SENSITIVITY)
        else:
            chosen = threshold_youden(y_select[:, t], probs[:, t])
        thresholds[task] = 0.5 if chosen is None else chosen
    metrics = {
        task: task_report(
            y_select[:, t],
            probs[:, t],
            threshold=thresholds[task],
            sex=select_data.sex,
            age_years=select_data.age_years,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for t, task in enumerate(TASKS)
    }
    weights = _write_weights(
        out_dir=Path(out_dir),
        state=best_state,
        make_meta=lambda digest: WeightsMeta(
            model_version=f"{MODEL_NAME}-{MODEL_RELEASE}+{digest[:8]}",
            sha256=digest,
            tasks=TASKS,
            task_vessel=dict(TASK_VESSEL),
            thresholds=thresholds,
            operating_points={
                "mi": f"largest threshold with sensitivity >= {TRIAGE_MIN_SENSITIVITY} "
                f"on folds {list(select_folds)}",
                **{t: f"max Youden J on folds {list(select_folds)}" for t in TASK_VESSEL},
            },
            preprocess=pconf,
            architecture=arch,
            seed=seed,
            training_data={
                "source": "PTB-XL v1.0.3 subset (Wagner et al., Scientific Data 2020; "
                "PhysioNet; CC BY 4.0)",
                "data_dir_name": Path(data_dir).name,
                "train": _data_summary(train_data, train_folds),
                "selection": _data_summary(select_data, select_folds),
            },
            recipe=recipe.to_json()
            | {"best_epoch": best_epoch, "device": device, "torch": torch.__version__},
            metrics={"selection_folds": list(select_folds), "tasks": metrics},
            created=datetime.now(UTC).date().isoformat(),
        ),
    )
    report = TrainReport(
        weights=weights,
        model_version=weights.meta.model_version,
        best_epoch=best_epoch,
        epochs=epochs,
        selection_auroc=_aurocs(y_select, probs),
        thresholds=thresholds,
        history=tuple(history),
        duration_s=time.perf_counter() - started,
    )
    logger.info(
        "wrote %s (best epoch %d) in %.0f s", weights.path.name, best_epoch, report.duration_s
    )
    return report


def _write_weights(
    *,
    out_dir: Path,
    state: dict[str, torch.Tensor],
    make_meta: Any,
) -> Weights:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{MODEL_NAME}.tmp.pt"
    torch.save(state, tmp)
    digest = sha256_file(tmp)
    path = out_dir / f"{MODEL_NAME}-{digest[:8]}.pt"
    tmp.replace(path)
    meta: WeightsMeta = make_meta(digest)
    path.with_suffix(".json").write_text(
        json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return weights_from_file(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the ecgbridge ResNet1d.")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = train(
        data_dir=args.data_dir,
        out_dir=args.out_dir,
        seed=args.seed,
        epochs=args.epochs,
        device=args.device,
    )
    logging.getLogger(__name__).info("done: %s", report.weights.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
