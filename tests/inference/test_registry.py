"""The hash-pinned weights registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inference.errors import ModelError
from inference.labels import HEAD_TASKS
from inference.registry import DEFAULT_WEIGHTS, Weights, sha256_file, weights_from_file


def _copy_default(tmp_path: Path) -> Weights:
    for src in (DEFAULT_WEIGHTS.path, DEFAULT_WEIGHTS.meta_path):
        shutil.copy(src, tmp_path / src.name)
    return weights_from_file(tmp_path / DEFAULT_WEIGHTS.path.name)


def test_default_weights_are_pinned_and_small() -> None:
    digest = DEFAULT_WEIGHTS.verify()
    assert DEFAULT_WEIGHTS.path.name.endswith(f"-{digest[:8]}.pt")
    assert DEFAULT_WEIGHTS.path.stat().st_size < 20 * 1024 * 1024
    meta = DEFAULT_WEIGHTS.meta
    assert meta.tasks == HEAD_TASKS
    assert meta.model_version.endswith(f"+{digest[:8]}")
    assert set(meta.thresholds) == set(HEAD_TASKS)
    assert meta.format == "ensemble-v1" and meta.n_members >= 1
    assert set(meta.calibration) == set(HEAD_TASKS)
    assert meta.stenosis is None  # the shipped model has no stenosis head
    assert all(0.0 < t < 1.0 for t in meta.thresholds.values())
    assert DEFAULT_WEIGHTS.transforms.fs_hz == 100.0
    assert DEFAULT_WEIGHTS.url.startswith("file://")
    assert meta.metrics["tasks"]["mi"]["ci95"] is not None


def test_tampered_weights_raise(tmp_path: Path) -> None:
    weights = _copy_default(tmp_path)
    weights.load_model("cpu")
    data = bytearray(weights.path.read_bytes())
    data[-100] ^= 0xFF
    weights.path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        weights_from_file(weights.path).load_model("cpu")


def test_renamed_weights_raise(tmp_path: Path) -> None:
    weights = _copy_default(tmp_path)
    other = tmp_path / "ecgbridge-resnet1d-deadbeef.pt"
    weights.path.rename(other)
    weights.meta_path.rename(other.with_suffix(".json"))
    with pytest.raises(ModelError, match="name"):
        weights_from_file(other).verify()


def test_meta_hash_mismatch_raises(tmp_path: Path) -> None:
    weights = _copy_default(tmp_path)
    meta = json.loads(weights.meta_path.read_text())
    meta["sha256"] = "0" * 64
    weights.meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="meta"):
        weights_from_file(weights.path).verify()


def test_missing_and_badly_named_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        weights_from_file(tmp_path / "model.pt")
    with pytest.raises(ModelError):
        Weights(tmp_path / "ecgbridge-resnet1d-12345678.pt").verify()
    assert sha256_file(DEFAULT_WEIGHTS.path) == DEFAULT_WEIGHTS.meta.sha256
