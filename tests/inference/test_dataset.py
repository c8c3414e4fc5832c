from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.dataset import DatasetError, PtbxlData, load_ptbxl
from inference.labels import HEAD_TASKS
from tests.inference.conftest import FIXTURE_DIR


def test_fixture_layout(sample_data: PtbxlData) -> None:
    assert len(sample_data) == 10
    assert sample_data.signals_mv.shape == (10, 12, 5000)
    assert sample_data.signals_mv.dtype == np.float32
    assert sample_data.fs_hz == 500.0
    assert sample_data.labels.shape == (10, 4)
    assert sample_data.labels.sum(axis=0).tolist() == [5, 2, 2, 2]
    assert set(sample_data.strat_fold.tolist()) == {9}
    with np.load(FIXTURE_DIR / "signals_500hz_uv.npz") as npz:
        np.testing.assert_array_equal(np.rint(sample_data.signals_mv * 1000), npz["signals"])


def test_every_head_has_a_positive_in_the_fixture() -> None:
    data = load_ptbxl(FIXTURE_DIR, None, HEAD_TASKS)
    assert data.tasks == HEAD_TASKS
    assert data.labels.shape == (10, len(HEAD_TASKS))
    pos = data.labels.sum(axis=0)
    assert (pos >= 1).all() and (pos <= 9).all()


def test_fold_filter() -> None:
    assert len(load_ptbxl(FIXTURE_DIR, [9])) == 10
    empty = load_ptbxl(FIXTURE_DIR, [1, 2])
    assert len(empty) == 0
    assert empty.labels.shape == (0, 4)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        load_ptbxl(tmp_path, None)
