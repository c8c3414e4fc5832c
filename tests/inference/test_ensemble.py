"""The served network (ensemble of members, optional stenosis heads), its registry formats
and the scoring of member logits into calibrated probabilities and uncertainty."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.calibration import Calibrator
from inference.ensemble import (
    EcgEnsemble,
    arch_conf_from_json,
    predict_logits,
    sigmoid,
    stack_members,
)
from inference.errors import ModelError
from inference.globallocal import GlobalLocalConf
from inference.model import ResNet1d, ResNet1dConf
from inference.preprocess import PreprocessConf
from inference.registry import WeightsMeta, sha256_file, weights_from_file
from inference.scoring import score


def _write(tmp_path: Path, name: str, state: dict[str, torch.Tensor], meta: WeightsMeta) -> Path:
    tmp = tmp_path / "tmp.pt"
    torch.save(state, tmp)
    digest = sha256_file(tmp)
    path = tmp_path / f"{name}-{digest[:8]}.pt"
    tmp.replace(path)
    meta = replace(meta, sha256=digest, model_version=f"{name}+{digest[:8]}")
    path.with_suffix(".json").write_text(json.dumps(meta.to_json()))
    return path


def _meta(conf: ResNet1dConf | GlobalLocalConf, **kw: object) -> WeightsMeta:
    tasks = tuple(f"t{i}" for i in range(conf.n_outputs))
    base = WeightsMeta(
        model_version="x",
        sha256="",
        tasks=tasks,
        task_vessel={},
        thresholds=dict.fromkeys(tasks, 0.5),
        preprocess=PreprocessConf(),
        architecture=conf,
        seed=0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_foundation_format_loads_as_one_member(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conf = ResNet1dConf(n_outputs=4)
    net = ResNet1d(conf).eval()
    path = _write(tmp_path, "legacy", net.state_dict(), _meta(conf))
    weights = weights_from_file(path)
    assert weights.meta.format == "resnet1d-v0" and weights.meta.arch == "resnet1d"
    model = weights.load_model("cpu")
    assert model.n_members == 1 and not model.has_stenosis
    x = np.random.default_rng(0).normal(size=(2, 12, 1000)).astype(np.float32)
    logits, sten = predict_logits(model, x)
    assert sten is None
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(logits[:, 0], expected, atol=1e-5)


def test_ensemble_format_with_stenosis_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conf = GlobalLocalConf(n_outputs=3)
    ens = EcgEnsemble(conf, 2, stenosis=True).eval()
    meta = _meta(conf, format="ensemble-v1", n_members=2, stenosis={"validated": False})
    weights = weights_from_file(_write(tmp_path, "ens", ens.state_dict(), meta))
    model = weights.load_model("cpu")
    assert weights.meta.arch == "globallocal" and model.n_members == 2 and model.has_stenosis
    x = np.zeros((3, 12, 1000), dtype=np.float32)
    logits, sten = predict_logits(model, x, batch_size=2)
    assert logits.shape == (3, 2, 3)
    assert sten is not None and sten.shape == (3, 2, 3)
    empty, empty_sten = predict_logits(model, x[:0])
    assert empty.shape == (0, 2, 3) and empty_sten is not None and empty_sten.shape[0] == 0


def test_stack_members_and_errors(tmp_path: Path) -> None:
    conf = ResNet1dConf(n_outputs=2)
    states = [ResNet1d(conf).state_dict() for _ in range(2)]
    ens = EcgEnsemble(conf, 2)
    ens.load_state_dict(stack_members(states))
    with pytest.raises(ValueError, match="member"):
        EcgEnsemble(conf, 0)
    with pytest.raises(ValueError, match="architecture"):
        arch_conf_from_json("transformer-xl", {})
    meta = _meta(conf, format="ensemble-v9")
    weights = weights_from_file(_write(tmp_path, "odd", ResNet1d(conf).state_dict(), meta))
    with pytest.raises(ModelError, match="format"):
        weights.load_model("cpu")


def test_score_calibrates_the_mean_logit_and_measures_spread() -> None:
    logits = np.array([[[0.0, 2.0], [2.0, 2.0], [4.0, 2.0]]])  # one record, 3 members, 2 tasks
    cal = {"a": Calibrator("temperature", {"t": 2.0})}
    scores = score(logits, ["a", "b"], cal)
    assert scores.probs[0, 0] == pytest.approx(sigmoid(1.0))  # mean logit 2, T = 2
    assert scores.probs[0, 1] == pytest.approx(sigmoid(2.0))  # no calibrator: identity
    assert scores.sd is not None and scores.sd[0, 1] == pytest.approx(0.0)
    assert scores.sd[0, 0] > 0.1
    assert scores.low is not None and scores.high is not None
    assert scores.low[0, 0] < scores.probs[0, 0] < scores.high[0, 0]
    single = score(logits[:, :1], ["a", "b"], cal)
    assert single.sd is None and single.low is None
    with pytest.raises(ValueError, match="tasks"):
        score(logits, ["a"], cal)
