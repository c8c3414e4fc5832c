"""A one-epoch smoke run of the training recipe on the fixture records (into tmp_path)."""

from __future__ import annotations

from pathlib import Path

from inference.analyzer import Analyzer
from inference.labels import TASKS
from inference.record import EcgRecord
from inference.train import train
from tests.inference.conftest import FIXTURE_DIR


def test_train_smoke(tmp_path: Path, sample_records: list[EcgRecord]) -> None:
    report = train(
        data_dir=FIXTURE_DIR,
        out_dir=tmp_path,
        seed=0,
        epochs=1,
        device="cpu",
        train_folds=(9,),
        select_folds=(9,),
        n_bootstrap=10,
    )
    assert report.best_epoch == 1
    assert len(report.history) == 1
    assert set(report.thresholds) == set(TASKS)
    assert report.weights.path.is_file() and report.weights.meta_path.is_file()
    report.weights.verify()
    assert report.model_version.startswith("ecgbridge-resnet1d-0.1.0+")
    analyzer = Analyzer.load(report.weights, device="cpu")
    result = analyzer.analyze(sample_records[0])
    assert result.model_version == report.model_version
    assert result.triage is not None
