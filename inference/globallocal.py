"""The global-local model: a CNN for local morphology plus a Transformer over lead x time
patches of the signal decomposed into trend, seasonal (beat-periodic) and residual parts.

Input (batch, 12, n) at the model rate (`PreprocessConf`, 100 Hz, 10 s), float32 mV.

1. `Decompose` (no parameters, runs inside the model so it travels with the weights and on the
   GPU): *trend* = centred moving average (`trend_window_s`); *seasonal* = the detrended signal
   folded at the record's beat period (autocorrelation peak of the summed lead energy between
   `min_period_s` and `max_period_s`) and averaged per phase, i.e. the average beat tiled over
   the record; *residual* = what is left (beat-to-beat variation: ectopy, irregular rhythm,
   noise). Exact: trend + seasonal + residual == input.
2. Local branch: the 1-D ResNet trunk (`inference.model.ResNet1d`) on the detrended signal,
   global average + max pooled: QRS, ST and T shapes per lead.
3. Global branch: a per-lead convolutional front end (grouped convolution, each lead sees only
   its own 3 components, stride 4), cut into 1 s patches per lead; each (lead, patch) is a token
   with a learned lead and a learned time embedding; a pre-norm Transformer encoder attends
   across leads and across the whole 10 s; a class token and the token mean are pooled.
4. One linear layer over both branches gives one logit per task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from inference.model import ResNet1d, ResNet1dConf


@dataclass(frozen=True, slots=True)
class GlobalLocalConf:
    """Architecture hyper-parameters; stored in the weights' meta so loading rebuilds it."""

    in_leads: int = 12
    n_outputs: int = 10
    fs_hz: float = 100.0
    n_samples: int = 1000
    trend_window_s: float = 1.0
    min_period_s: float = 0.3
    max_period_s: float = 2.0
    local_widths: tuple[int, ...] = (32, 64, 96, 128)
    local_blocks_per_stage: int = 1
    lead_channels: int = 16
    patch_s: float = 1.0
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ff_dim: int = 128
    attn_dropout: float = 0.1
    dropout: float = 0.3

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["local_widths"] = list(self.local_widths)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GlobalLocalConf:
        values = dict(data)
        values["local_widths"] = tuple(values["local_widths"])
        return cls(**values)


class Decompose(nn.Module):
    """(B, C, T) -> trend, seasonal, residual, each (B, C, T). No learned parameters."""

    def __init__(
        self, *, fs_hz: float, trend_window_s: float, min_period_s: float, max_period_s: float
    ) -> None:
        super().__init__()
        window = max(3, round(trend_window_s * fs_hz))
        self.window = window + (1 - window % 2)  # odd, so the average is centred
        self.min_lag = max(2, round(min_period_s * fs_hz))
        self.max_lag = max(self.min_lag + 1, round(max_period_s * fs_hz))

    def period(self, detrended: torch.Tensor) -> torch.Tensor:
        """The beat period in samples per record (B,), from the autocorrelation of the
        summed lead energy (derivative squared, which emphasises QRS complexes)."""
        energy = detrended.diff(dim=-1).pow(2).sum(dim=1)
        energy = energy - energy.mean(dim=-1, keepdim=True)
        n = energy.shape[-1]
        spec = torch.fft.rfft(energy, n=2 * n)
        acf = torch.fft.irfft(spec * spec.conj(), n=2 * n)[..., :n]
        hi = min(self.max_lag, n - 1)
        lo = min(self.min_lag, hi)
        return torch.argmax(acf[..., lo : hi + 1], dim=-1) + lo

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, channels, n = x.shape
        pad = self.window // 2
        padded = F.pad(x, (pad, pad), mode="replicate")
        trend = F.avg_pool1d(padded, self.window, stride=1)
        detrended = x - trend
        period = self.period(detrended)  # (B,)
        phase = torch.arange(n, device=x.device).unsqueeze(0) % period.unsqueeze(1)  # (B, T)
        slots = int(self.max_lag) + 1
        index = phase.unsqueeze(1).expand(batch, channels, n)
        sums = torch.zeros(batch, channels, slots, dtype=x.dtype, device=x.device)
        sums.scatter_add_(2, index, detrended)
        counts = torch.zeros(batch, slots, dtype=x.dtype, device=x.device)
        counts.scatter_add_(1, phase, torch.ones_like(phase, dtype=x.dtype))
        template = sums / counts.clamp(min=1.0).unsqueeze(1)
        seasonal = torch.gather(template, 2, index)
        return trend, seasonal, detrended - seasonal


class GlobalLocalNet(nn.Module):
    """(batch, 12, n) float32 -> (batch, n_outputs) logits."""

    def __init__(self, conf: GlobalLocalConf | None = None) -> None:
        super().__init__()
        self.conf = c = conf or GlobalLocalConf()
        self.decompose = Decompose(
            fs_hz=c.fs_hz,
            trend_window_s=c.trend_window_s,
            min_period_s=c.min_period_s,
            max_period_s=c.max_period_s,
        )
        self.local = ResNet1d(
            ResNet1dConf(
                in_leads=c.in_leads,
                n_outputs=1,
                widths=c.local_widths,
                blocks_per_stage=c.local_blocks_per_stage,
            )
        )
        self.local.head = nn.Identity()  # type: ignore[assignment]  # trunk only
        lc = c.lead_channels * c.in_leads
        self.front = nn.Sequential(
            nn.Conv1d(3 * c.in_leads, lc, 7, stride=2, padding=3, groups=c.in_leads, bias=False),
            nn.BatchNorm1d(lc),
            nn.ReLU(inplace=True),
            nn.Conv1d(lc, lc, 7, stride=2, padding=3, groups=c.in_leads, bias=False),
            nn.BatchNorm1d(lc),
            nn.ReLU(inplace=True),
        )
        self.stride = 4
        steps = -(-c.n_samples // self.stride)
        self.patch_len = max(1, round(c.patch_s * c.fs_hz / self.stride))
        self.n_patches = -(-steps // self.patch_len)
        self.embed = nn.Linear(c.lead_channels * self.patch_len, c.d_model)
        self.lead_pos = nn.Parameter(torch.zeros(1, c.in_leads, 1, c.d_model))
        self.time_pos = nn.Parameter(torch.zeros(1, 1, self.n_patches, c.d_model))
        self.cls = nn.Parameter(torch.zeros(1, 1, c.d_model))
        nn.init.normal_(self.lead_pos, std=0.02)
        nn.init.normal_(self.time_pos, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(
            c.d_model,
            c.n_heads,
            dim_feedforward=c.ff_dim,
            dropout=c.attn_dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)
        self.feature_dim = 2 * c.local_widths[-1] + 2 * c.d_model
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(self.feature_dim, c.n_outputs)

    def tokens(
        self, trend: torch.Tensor, seasonal: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """Decomposed (B, 12, T) x 3 -> lead x patch tokens (B, 12 * n_patches, d_model)."""
        c = self.conf
        stacked = torch.stack([trend, seasonal, residual], dim=2)  # (B, 12, 3, T)
        h = self.front(stacked.flatten(1, 2))  # (B, 12 * ch, T / 4)
        batch, _, steps = h.shape
        total = self.n_patches * self.patch_len
        if steps < total:
            h = F.pad(h, (0, total - steps))
        h = h[..., :total].reshape(batch, c.in_leads, c.lead_channels, self.n_patches, -1)
        h = h.permute(0, 1, 3, 2, 4).flatten(3)  # (B, 12, P, ch * patch_len)
        tok = self.embed(h) + self.lead_pos + self.time_pos
        tokens: torch.Tensor = tok.flatten(1, 2)
        return tokens

    def features(
        self,
        x: torch.Tensor,
        parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Pooled local and global features, (batch, feature_dim). `parts` may pass in
        ``self.decompose(x)`` when it is already known (an ensemble shares it)."""
        trend, seasonal, residual = self.decompose(x) if parts is None else parts
        local = self.local.features(seasonal + residual)
        tok = self.tokens(trend, seasonal, residual)
        cls = self.cls.expand(tok.shape[0], -1, -1)
        enc = self.norm(self.encoder(torch.cat([cls, tok], dim=1)))
        return torch.cat([local, enc[:, 0], enc[:, 1:].mean(dim=1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.dropout(self.features(x)))
        return logits
