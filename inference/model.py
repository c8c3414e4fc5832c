"""A compact 1-D ResNet over (12, 1000) inputs (10 s at 100 Hz) with one logit per task.

Shared trunk: a strided stem, four stages of pre-activation-free basic residual blocks
(conv-BN-ReLU-conv-BN + projection shortcut when the shape changes), then concatenated global
average and max pooling, dropout and one linear layer giving one logit per task
(`inference.labels.TASKS`). About 0.5 M parameters (about 2 MB as float32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class ResNet1dConf:
    """Architecture hyper-parameters; stored in the weights' meta so loading rebuilds it."""

    in_leads: int = 12
    n_outputs: int = 4
    stem_channels: int = 32
    stem_kernel: int = 15
    widths: tuple[int, ...] = (32, 64, 96, 128)
    blocks_per_stage: int = 2
    kernel: int = 7
    dropout: float = 0.3

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResNet1dConf:
        values = dict(data)
        values["widths"] = tuple(values["widths"])
        return cls(**values)


class BasicBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        y: torch.Tensor = self.relu(out + self.shortcut(x))
        return y


class ResNet1d(nn.Module):
    """(batch, 12, n) float32 -> (batch, n_outputs) logits. Apply a sigmoid for probabilities."""

    def __init__(self, conf: ResNet1dConf | None = None) -> None:
        super().__init__()
        self.conf = conf or ResNet1dConf()
        c = self.conf
        self.stem = nn.Sequential(
            nn.Conv1d(
                c.in_leads,
                c.stem_channels,
                c.stem_kernel,
                stride=2,
                padding=c.stem_kernel // 2,
                bias=False,
            ),
            nn.BatchNorm1d(c.stem_channels),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        c_in = c.stem_channels
        for stage, width in enumerate(c.widths):
            for b in range(c.blocks_per_stage):
                stride = 2 if b == 0 and stage > 0 else 1
                blocks.append(BasicBlock1d(c_in, width, c.kernel, stride))
                c_in = width
        self.trunk = nn.Sequential(*blocks)
        self.feature_dim = 2 * c_in
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(2 * c_in, c.n_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared trunk's pooled features, (batch, 2 * last width)."""
        h = self.trunk(self.stem(x))
        return torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.dropout(self.features(x)))
        return logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def predict_proba(
    model: nn.Module,
    inputs: npt.NDArray[np.float32],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> npt.NDArray[np.float64]:
    """Sigmoid probabilities (n, n_outputs) for preprocessed inputs (n, 12, n_samples).

    Puts `model` in eval mode and runs under `torch.inference_mode`, in batches.
    """
    model.eval()
    outs: list[npt.NDArray[np.float64]] = []
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size]))
            logits = model(x.to(device))
            outs.append(torch.sigmoid(logits).double().cpu().numpy())
    if not outs:
        return np.zeros((0, 0), dtype=np.float64)
    return np.concatenate(outs, axis=0)
