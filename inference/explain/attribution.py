"""Integrated gradients of the ensemble's logits, aggregated per (lead, segment), and the
deletion test that checks them.

**Integrated gradients** (Sundararajan, Taly & Yan 2017): for an input x, a baseline x' and
an output f, ``IG_i = (x_i - x'_i) * mean_k df/dx_i (x' + a_k (x - x'))`` with ``a_k`` the
midpoints of `steps` equal bins of [0, 1] (midpoint Riemann sum). The output is the
ensemble's *mean member logit* of a task (what the calibration maps to the probability; the
calibration is monotone, so the logit carries the decision). By completeness the
attributions sum to ``f(x) - f(x')``, up to the quadrature error, which `IgResult.gap`
reports.

**Baseline: zero** (the flat isoelectric line) on the preprocessed input. After the
0.5-40 Hz band-pass the isoelectric level is 0, so the zero signal is "these 12 leads with no
electrical activity", and the path from it scales every wave, the slow ST and T waves
included. A low-pass-filtered baseline would keep the slow components in the baseline, so
the ST and T segments (the waves that carry acute ischaemia) would get almost no
attribution by construction: wrong for an MI explanation.

**Aggregation**: ``share(lead, segment) = sum of |IG| over that lead's samples in that
segment (every beat) / sum of |IG| over all 12 leads and all samples``. The total includes
samples outside any segment (PR and TP intervals, the unmeasured edges), so the shares sum to
at most 1; the remainder is what lies between the waves.

**Deletion test** (after Samek et al. 2017, "region perturbation"): remove the top-k
(lead, segment) units, each beat's span replaced by the straight line between the samples
just before and after it (the segment linearly interpolated), and compare the change of the
output with removing k random units. Faithful attributions move the output more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from inference.explain.segments import SEGMENTS, LabelArray

FloatArray = npt.NDArray[np.float64]
#: A batch of model inputs (B, 12, n) -> mean member logits (B, n_tasks).
LogitFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class Attribution:
    """One (lead, segment)'s share of the total |attribution|."""

    lead: str
    segment: str
    share: float

    def to_json(self) -> dict[str, str | float]:
        return {"lead": self.lead, "segment": self.segment, "share": self.share}


@dataclass(frozen=True)
class IgResult:
    """Attributions (n_outputs, 12, n) for the outputs asked; `gap` (n_outputs,) is
    ``sum(IG) - (f(x) - f(baseline))``, the quadrature error."""

    attributions: FloatArray
    gap: FloatArray


def integrated_gradients(
    logit_fn: LogitFn,
    x: npt.NDArray[np.float32],
    outputs: Sequence[int],
    *,
    steps: int = 16,
    baseline: npt.NDArray[np.float32] | None = None,
) -> IgResult:
    """IG of `outputs` (task indices) of `logit_fn` at one input `x` (12, n).

    One batched forward of the `steps` path points and one backward per output."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    base = torch.zeros_like(x_t) if baseline is None else torch.from_numpy(baseline)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    path = (base + alphas[:, None, None] * (x_t - base)).requires_grad_(True)
    logits = logit_fn(path)
    with torch.no_grad():
        ends = logit_fn(torch.stack([base, x_t]))
    attrs = np.empty((len(outputs), *x.shape), dtype=np.float64)
    gaps = np.empty(len(outputs), dtype=np.float64)
    diff = (x_t - base).double().numpy()
    for k, out in enumerate(outputs):
        (grad,) = torch.autograd.grad(logits[:, out].sum(), path, retain_graph=k < len(outputs) - 1)
        attrs[k] = diff * grad.double().mean(dim=0).numpy()
        gaps[k] = attrs[k].sum() - float(ends[1, out] - ends[0, out])
    return IgResult(attributions=attrs, gap=gaps)


def unit_mass(attribution: FloatArray, labels: LabelArray) -> FloatArray:
    """|attribution| (12, n) summed per (lead, segment): shape (12, len(SEGMENTS))."""
    a = np.abs(attribution)
    return np.stack([a[:, labels == k].sum(axis=1) for k in range(len(SEGMENTS))], axis=1)


def aggregate(
    attribution: FloatArray, labels: LabelArray, lead_names: Sequence[str]
) -> tuple[Attribution, ...]:
    """Every (lead, segment) with its share (module docstring), largest first; ties keep
    lead then segment order. Shares sum to <= 1."""
    total = float(np.abs(attribution).sum())
    mass = unit_mass(attribution, labels)
    shares = mass / total if total > 0 else np.zeros_like(mass)
    items = [
        Attribution(lead_names[i], SEGMENTS[k].value, float(shares[i, k]))
        for i in range(mass.shape[0])
        for k in range(mass.shape[1])
        if (labels == k).any()
    ]
    return tuple(sorted(items, key=lambda item: -item.share))


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Half-open runs of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


def remove_units(
    x: npt.NDArray[np.float32],
    labels: LabelArray,
    units: Sequence[tuple[int, int]],
) -> npt.NDArray[np.float32]:
    """A copy of `x` (12, n) with each (lead index, segment index) unit removed: every span
    of the segment in that lead replaced by the line between its neighbouring samples."""
    out = np.array(x, dtype=np.float32, copy=True)
    n = out.shape[1]
    for lead, seg in units:
        for a, b in _runs(labels == seg):
            left = float(out[lead, a - 1]) if a > 0 else float(out[lead, b % n])
            right = float(out[lead, b]) if b < n else left
            out[lead, a:b] = np.linspace(left, right, b - a + 2, dtype=np.float32)[1:-1]
    return out


@dataclass(frozen=True)
class DeletionResult:
    """|change of the output logit| after removing the top-k units and k random units (the
    mean over `n_random` draws); `random_changes` holds each draw."""

    k: int
    top_units: tuple[tuple[str, str], ...]
    top_change: float
    random_change: float
    random_changes: tuple[float, ...]

    @property
    def passed(self) -> bool:
        return self.top_change > self.random_change


def deletion_test(
    logit_fn: LogitFn,
    x: npt.NDArray[np.float32],
    labels: LabelArray,
    attributions: Sequence[Attribution],
    lead_names: Sequence[str],
    *,
    output: int = 0,
    k: int = 3,
    n_random: int = 8,
    seed: int = 0,
) -> DeletionResult:
    """Remove the `k` most attributed units of `attributions` and `n_random` times `k`
    random units (uniform over the units present, seeded), and measure the output's change.
    All variants go through `logit_fn` in one batch."""
    lead_index = {name: i for i, name in enumerate(lead_names)}
    seg_index = {seg.value: i for i, seg in enumerate(SEGMENTS)}
    top = [(lead_index[a.lead], seg_index[a.segment]) for a in attributions[:k]]
    present = [s for s in range(len(SEGMENTS)) if (labels == s).any()]
    pool = [(lead, s) for lead in range(len(lead_names)) for s in present]
    rng = np.random.default_rng(seed)
    draws = [
        [pool[j] for j in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]
        for _ in range(n_random)
    ]
    batch = np.stack(
        [x, remove_units(x, labels, top)] + [remove_units(x, labels, d) for d in draws]
    )
    with torch.no_grad():
        z = logit_fn(torch.from_numpy(batch))[:, output].double().numpy()
    changes = np.abs(z[1:] - z[0])
    return DeletionResult(
        k=k,
        top_units=tuple((lead_names[lead], SEGMENTS[s].value) for lead, s in top),
        top_change=float(changes[0]),
        random_change=float(changes[1:].mean()),
        random_changes=tuple(float(c) for c in changes[1:]),
    )
