"""The served network: one or more members (a deep ensemble), each a trunk with one linear
head over `HEAD_TASKS`, plus an optional per-member stenosis head added by site fine-tuning.

Architectures are looked up by name (``"resnet1d"``, ``"globallocal"``) so the weights' meta
can rebuild the model. `predict_logits` is the one batched inference entry point (CPU or CUDA,
the device comes from the caller); it returns every member's logits, from which the analyzer
derives the probability (calibrated mean) and the uncertainty (spread across members).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from inference.globallocal import GlobalLocalConf, GlobalLocalNet
from inference.model import ResNet1d, ResNet1dConf

ArchConf = ResNet1dConf | GlobalLocalConf
ARCHITECTURES: tuple[str, ...] = ("resnet1d", "globallocal")
#: Stenosis head outputs: P(stenosis > 70 %) per vessel.
STENOSIS_VESSELS: tuple[str, ...] = ("LAD", "LCx", "RCA")


def arch_conf_from_json(arch: str, data: dict[str, Any]) -> ArchConf:
    if arch == "resnet1d":
        return ResNet1dConf.from_json(data)
    if arch == "globallocal":
        return GlobalLocalConf.from_json(data)
    raise ValueError(f"unknown architecture {arch!r}; known: {ARCHITECTURES}")


def build_member(conf: ArchConf) -> ResNet1d | GlobalLocalNet:
    if isinstance(conf, GlobalLocalConf):
        return GlobalLocalNet(conf)
    return ResNet1d(conf)


def arch_name(conf: ArchConf) -> str:
    return "globallocal" if isinstance(conf, GlobalLocalConf) else "resnet1d"


def arch_conf_to_json(conf: ArchConf) -> dict[str, Any]:
    return {"arch": arch_name(conf), "conf": conf.to_json()}


def arch_conf_from_tagged(data: dict[str, Any]) -> ArchConf:
    return arch_conf_from_json(str(data["arch"]), dict(data["conf"]))


class EcgEnsemble(nn.Module):
    """`n_members` members of one architecture, or one member per conf of a sequence (a
    mixed ensemble; all must have the same outputs). ``forward`` gives logits (batch,
    members, outputs); `forward_with_stenosis` also the stenosis logits (batch, members, 3)
    or None."""

    def __init__(
        self, conf: ArchConf | Sequence[ArchConf], n_members: int = 1, *, stenosis: bool = False
    ) -> None:
        super().__init__()
        confs = (
            [conf] * n_members if isinstance(conf, ResNet1dConf | GlobalLocalConf) else list(conf)
        )
        if not confs:
            raise ValueError("an ensemble needs at least one member")
        if len({c.n_outputs for c in confs}) != 1:
            raise ValueError("ensemble members must have the same outputs")
        self.confs = tuple(confs)
        self.conf = confs[0]
        self.members = nn.ModuleList([build_member(c) for c in confs])
        self.stenosis: nn.ModuleList | None = None
        if stenosis:
            self.add_stenosis_heads()

    def member(self, i: int) -> ResNet1d | GlobalLocalNet:
        return cast(ResNet1d | GlobalLocalNet, self.members[i])

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def has_stenosis(self) -> bool:
        return self.stenosis is not None

    def add_stenosis_heads(self) -> nn.ModuleList:
        heads = nn.ModuleList(
            [
                nn.Linear(self.member(i).feature_dim, len(STENOSIS_VESSELS))
                for i in range(self.n_members)
            ]
        )
        self.stenosis = heads
        return heads

    def forward_with_stenosis(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits: list[torch.Tensor] = []
        sten: list[torch.Tensor] = []
        shared: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for i in range(self.n_members):
            member = self.member(i)
            if isinstance(member, GlobalLocalNet):
                # the decomposition has no parameters: compute it once per configuration
                dec = member.decompose
                key = (dec.window, dec.min_lag, dec.max_lag)
                if key not in shared:
                    shared[key] = dec(x)
                feats = member.features(x, shared[key])
            else:
                feats = member.features(x)
            logits.append(member.head(member.dropout(feats)))
            if self.stenosis is not None:
                sten.append(self.stenosis[i](feats))
        return torch.stack(logits, dim=1), (torch.stack(sten, dim=1) if sten else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_stenosis(x)[0]


def predict_logits(
    model: EcgEnsemble,
    inputs: npt.NDArray[np.float32],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
    """Every member's logits for preprocessed inputs (n, 12, n_samples): an array
    (n, members, outputs) and the stenosis logits (n, members, 3) or None.

    Eval mode, `torch.inference_mode`, batches of `batch_size` on `device`."""
    model.eval()
    outs: list[npt.NDArray[np.float64]] = []
    stens: list[npt.NDArray[np.float64]] = []
    n_out = _n_outputs(model)
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size]))
            logits, sten = model.forward_with_stenosis(x.to(device))
            outs.append(logits.double().cpu().numpy())
            if sten is not None:
                stens.append(sten.double().cpu().numpy())
    if not outs:
        empty = np.zeros((0, model.n_members, n_out), dtype=np.float64)
        no_sten = np.zeros((0, model.n_members, len(STENOSIS_VESSELS)))
        return empty, (no_sten if model.has_stenosis else None)
    return np.concatenate(outs, axis=0), (np.concatenate(stens, axis=0) if stens else None)


def _n_outputs(model: EcgEnsemble) -> int:
    return int(model.member(0).head.out_features)


def sigmoid(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    z = np.asarray(x, dtype=np.float64)
    out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def stack_members(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Member state dicts -> one `EcgEnsemble` state dict (``members.<i>.<key>``)."""
    return {f"members.{i}.{k}": v for i, state in enumerate(states) for k, v in state.items()}
