"""Smoke runs of the training recipe on the fixture records (into tmp_path), the member plan,
and the claim that an ensemble assembled from one-member runs is the ensemble `train` makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.analyzer import Analyzer
from inference.experiments import assemble, run
from inference.labels import HEAD_TASKS
from inference.record import EcgRecord
from inference.train import DEFAULT_MEMBER_SPECS, member_plan, one_cycle_lr, train
from tests.inference.conftest import FIXTURE_DIR

FOLD9 = {"train_folds": (9,), "select_folds": (9,)}


def test_train_smoke(tmp_path: Path, sample_records: list[EcgRecord]) -> None:
    report = train(
        data_dir=FIXTURE_DIR,
        out_dir=tmp_path,
        seed=0,
        epochs=1,
        device="cpu",
        n_bootstrap=10,
        n_members=2,
        members=None,
        arch="resnet1d",
        **FOLD9,  # type: ignore[arg-type]
    )
    assert report.best_epoch == 1
    assert [len(h) for h in report.history] == [1, 1]
    assert set(report.thresholds) == set(HEAD_TASKS)
    assert report.weights.path.is_file() and report.weights.meta_path.is_file()
    report.weights.verify()
    meta = report.weights.meta
    assert report.model_version.startswith("ecgbridge-resnet1d-0.2.0+")
    assert meta.format == "ensemble-v1" and meta.n_members == 2
    assert set(meta.calibration) == set(HEAD_TASKS)
    assert meta.uncertainty["method"] == "ensemble-sd"
    assert report.selection_logits.shape == (10, 2, len(HEAD_TASKS))
    assert set(meta.metrics["calibration_methods"]) == {"none", "temperature", "platt", "isotonic"}
    assert meta.recipe["member_plan"] == [
        {"arch": "resnet1d", "imbalance": "none", "seed": 0},
        {"arch": "resnet1d", "imbalance": "none", "seed": 1},
    ]
    analyzer = Analyzer.load(report.weights, device="cpu")
    result = analyzer.analyze(sample_records[0])
    assert result.model_version == report.model_version
    assert result.triage is not None and result.triage.uncertainty is not None
    assert result.ischemia is not None and len(result.rhythms) == 5
    assert result.stenosis is not None and not result.stenosis.assessed


@pytest.mark.parametrize(
    ("arch", "imbalance"), [("globallocal", "pos_weight"), ("resnet1d", "dril")]
)
def test_other_methods_run(tmp_path: Path, arch: str, imbalance: str) -> None:
    report = train(
        data_dir=FIXTURE_DIR,
        out_dir=tmp_path,
        epochs=3,
        device="cpu",
        n_bootstrap=10,
        n_members=1,
        arch=arch,
        imbalance=imbalance,
        members=None,
        **FOLD9,  # type: ignore[arg-type]
    )
    assert report.model_version.startswith(f"ecgbridge-{arch}-")
    assert report.weights.meta.recipe["imbalance"] == imbalance
    assert report.weights.meta.uncertainty["method"] == "none"
    if imbalance == "dril":  # warm-up, incremental sub-dataset epochs, one full epoch
        assert len(report.history[0]) >= 2


def test_assembled_ensemble_is_the_trained_one(tmp_path: Path) -> None:
    for name, arch in (("a", "resnet1d"), ("b", "globallocal")):
        run(
            name=name,
            data_dir=FIXTURE_DIR,
            root=tmp_path / "exp",
            epochs=1,
            arch=arch,
            n_bootstrap=10,
            **FOLD9,  # type: ignore[arg-type]
        )
    assembled = assemble(
        names=["a", "b"],
        data_dir=FIXTURE_DIR,
        out_dir=tmp_path / "assembled",
        root=tmp_path / "exp",
        n_bootstrap=10,
        select_folds=(9,),
    )
    trained = train(
        data_dir=FIXTURE_DIR,
        out_dir=tmp_path / "trained",
        epochs=1,
        members=["resnet1d:none", "globallocal:none"],
        n_bootstrap=10,
        **FOLD9,  # type: ignore[arg-type]
    )
    # same member networks, bit for bit: the hash-pinned file names agree
    assert assembled.weights.path.name == trained.weights.path.name
    assert assembled.weights.path.name.startswith("ecgbridge-ensemble-")
    meta = assembled.weights.meta
    assert meta.arch == "ensemble" and len(meta.member_architectures) == 2
    model = assembled.weights.load_model("cpu")
    assert [type(m).__name__ for m in model.members] == ["ResNet1d", "GlobalLocalNet"]
    assert assembled.thresholds == trained.thresholds


def test_member_plan_and_schedule() -> None:
    assert member_plan("none", 3, 0, members=DEFAULT_MEMBER_SPECS) == [
        ("globallocal", "none", 0),
        ("globallocal", "none", 1),
        ("globallocal", "none", 2),
    ]
    assert member_plan("none", 3, 5) == [("globallocal", "none", s) for s in (5, 6, 7)]
    assert member_plan(["none", "dril", "none"], 99, 0, arch="resnet1d") == [
        ("resnet1d", "none", 0),
        ("resnet1d", "dril", 0),
        ("resnet1d", "none", 1),
    ]
    assert member_plan("none", 1, 0, members=["globallocal:none", "resnet1d:dril", "resnet1d"]) == [
        ("globallocal", "none", 0),
        ("resnet1d", "dril", 0),
        ("resnet1d", "none", 0),
    ]
    with pytest.raises(ValueError, match="architecture"):
        member_plan("none", 1, 0, members=["lstm:none"])
    with pytest.raises(ValueError, match="imbalance"):
        member_plan("smote", 1, 0)
    with pytest.raises(ValueError, match="member"):
        member_plan([], 1, 0)
    assert one_cycle_lr(0.0, 3e-3) == pytest.approx(3e-3 / 25)
    assert one_cycle_lr(0.3, 3e-3) == pytest.approx(3e-3)
    assert one_cycle_lr(1.0, 3e-3) < 1e-6
