"""The counterfactual explainer: the smallest plausible per-lead, per-segment edit that
flips the triage.

**What is edited.** Per lead, four parameters, each a signed change in mV at one point of
the median beat:

* ``ST``: ST shift at J+60 ms (the smooth ST shape of `inference.explain.segments`, every
  beat); ``|d| <= MAX_ST_SHIFT_MV``.
* ``T``: T-wave amplitude change at the T peak (a raised-cosine bump over every T wave);
  ``|d| <= MAX_T_DELTA_MV``.
* ``Q`` (segment ``QRS``): the initial negative QRS deflection (Q wave, or QS complex) of the
  lead's own waveform scaled by one factor in every beat; ``d`` is the change of the median
  beat's Q trough (d > 0: a shallower Q). Bound: the factor stays within
  `Q_SCALE_RANGE` and ``|d| <= MAX_QRS_DELTA_MV``.
* ``R`` (segment ``QRS``): the positive part of the QRS scaled the same way; ``d`` is the
  change of the median R peak. Bound: factor within `R_SCALE_RANGE`, ``|d| <=
  MAX_QRS_DELTA_MV``.

A lead carries at most one of ``Q`` / ``R`` in a counterfactual, so each (lead, segment)
appears once; `Edit.wave` says which.

The bounds are enforced by construction: every proposed value is a fraction (at most 1) of
the unit's bound. Edits are applied to the real waveform in mV at the record's own rate;
since `preprocess` (polyphase resampling, zero-phase band-pass, crop/pad) is linear and
the shapes are fixed functions of the unedited record, the model input of the edited record
is exactly ``preprocess(record) + sum(d * preprocess(shape))`` before the final clip, which
the search uses to evaluate many edits in one batch. Limb leads a record lacks and the model
derives from I and II are not editable; an edit of I or II reaches the derived leads through
the same Einthoven/Goldberger equations the analyzer uses.

**How it is searched: by gradient on the edit parameters, not by a learned policy.**

1. *Greedy selection.* One forward/backward gives the gradient of the ensemble's mean MI
   logit with respect to all 48 edit parameters (12 leads x 4 kinds). The unit not yet used
   that promises the largest logit change (|gradient| times ``min(bound, RANK_MV)``: a wave
   that may only change by a few hundredths of a mV does not take a slot) is added, signed
   to push the logit across the threshold (logit space: the calibrated threshold mapped
   back through the monotone calibration, plus `MARGIN_LOGIT`); one batch evaluates it at
   the `GRID` fractions of its bound (mostly in the gradient's direction, two the other
   way: the model is not monotone in an edit); the smallest magnitude that crosses is
   kept, or else the one that moves the logit most, and the search repeats with the next
   unit (at most `MAX_EDITS`).
2. *Joint fallback* (`_joint`), when `MAX_EDITS` greedy edits do not cross: signed-gradient
   steps on every editable unit at once, inside the bounds; then the fewest units, by
   contribution, whose edit alone still crosses. Such counterfactuals edit many leads:
   the model's decision on these records does not rest on one or two leads.
3. *Pruning.* Edits whose removal keeps the flip are dropped (one batch per round; only
   up to `PRUNE_MAX` edits).
4. *Joint refinement* (`_refine`, minimax over the kept units: the target is the largest
   |edit| in mV): at the current edit, linearise the logit with one gradient and solve for
   the smallest ``t`` such that every kept unit at ``sign(gradient) * min(t, bound)``
   crosses; one batch evaluates ``t`` times `REFINE_STEPS`, and the smallest crossing
   point is taken when it lowers the largest |edit|.
5. *Minimax over the chosen leads* (`_minimax`): the same linearised cap, now over every
   unit of the leads already chosen (ST, T and one QRS wave per lead, not only the units
   the search pushed), for `MINIMAX_ROUNDS` rounds; each round evaluates a few caps and
   the current edit clipped below its cap in one batch (with gradients, so the next round
   linearises at the decision boundary). Spreading the change over a lead's ST, T and QRS
   lowers the largest edit without editing another lead. Only when the largest edit still
   reports at `SMALL_EDIT_MV` or more may the lead set change: a one-lead counterfactual
   may take a second lead, a two-lead one tries the two most promising leads instead,
   and one that needs more than two leads anyway may take `MORE_LEADS` more; the new set
   is kept only when it lowers the largest edit by `MINIMAX_LEAD_GAIN`. A counterfactual
   on one or two leads thus stays on at most two (the target is a median of two).
6. *Line search down.* The edits at the largest |edit| are shrunk, one at a time, to the
   smallest `SHRINK` fraction that still crosses (one batch each), while each can be.

Why not the RELAX policy of the issue's seed idea: a reinforcement-learning policy needs a
training loop of its own, its edits still have to be verified, and it gives no guarantee of
minimality; the model is small enough that a direct search on the model's own gradient costs
about a second on one CPU thread (median; more when the joint fallback runs). The "explain
the explainer" part (a distilled policy in the issue) is the decision tree of
`inference.explain.rules`, fitted to this search's choices.

The decision is the analyzer's: positive when the calibrated probability >= the shipped
threshold. Whether the final (rounded to 0.01 mV) edit really flips it is checked by the
caller through the analyzer's own preprocessing and scoring (`valid`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from inference.calibration import Calibrator
from inference.delineation import Segment

#: ST shift at J+60 ms (mV): 0.5 mV is beyond every STEMI criterion (0.1-0.25 mV) and
#: within what an acute injury current produces.
MAX_ST_SHIFT_MV = 0.5
#: T-wave peak change (mV): hyperacute or inverted T waves change by this much.
MAX_T_DELTA_MV = 0.8
#: Q-wave depth factor: lead placement and respiration change a Q wave's depth by up to
#: about half between recordings; beyond that the edit would invent or erase a Q wave.
Q_SCALE_RANGE = (0.5, 1.5)
#: R-wave amplitude factor: electrode position, respiration and body habitus move R
#: amplitude by about 30 % between recordings of the same heart.
R_SCALE_RANGE = (0.7, 1.3)
#: Largest QRS change (mV) whatever the factor allows: a tall R scaled by 30 % would
#: otherwise change by more than the ST bound.
MAX_QRS_DELTA_MV = 0.5
#: A lead whose median Q (R) deflection is smaller has no Q (R) edit: nothing to scale.
MIN_WAVE_MV = 0.05
#: Edit kinds, in parameter order (column of the edit matrix), and their segments.
EDIT_KINDS: tuple[str, ...] = ("ST", "T", "Q", "R")
EDIT_SEGMENTS: tuple[Segment, ...] = (Segment.ST, Segment.T, Segment.QRS, Segment.QRS)
_QRS_KINDS = (2, 3)
#: Values tried in one greedy line search, as signed fractions of the unit's bound
#: (positive = the gradient's direction).
GRID = (0.25, 0.5, 1.0, -0.5, -1.0)
#: Units are ranked by the logit change their gradient promises at this size (or at their
#: bound, when smaller): a Q wave that may only change by 0.03 mV is not worth a slot.
RANK_MV = 0.3
#: At most this many (lead, kind) edits in the greedy search (the joint fallback may keep
#: more).
MAX_EDITS = 4
#: Fallback joint search: at most this many signed-gradient steps, each this fraction of
#: every unit's bound.
JOINT_STEPS = 12
JOINT_STEP = 0.2
#: Numbers of units (largest contribution first) the fallback tries keeping, in one batch.
JOINT_KEEP = (1, 2, 3, 4, 6, 8, 12, 16, 24)
#: Pruning tries removing each edit (one batch per round) only for this many edits or fewer.
PRUNE_MAX = 6
#: The search aims this far (logit units) past the threshold, so float and rounding noise
#: cannot undo the flip.
MARGIN_LOGIT = 0.03
#: Multiples of the linearised minimax cap evaluated by the refinement of the kept units
#: (one round).
REFINE_STEPS = (0.9, 1.1, 1.4)
#: Minimax refinement over every unit of the chosen leads: rounds (one batch each, with
#: gradients but the last), the multiples of the linearised cap evaluated per round, and
#: the smallest share of the needed logit change a unit must carry at the cap to be edited
#: at all.
MINIMAX_ROUNDS = 3
MINIMAX_STEPS = (0.95, 1.1, 1.3)
MINIMAX_MIN_SHARE = 0.05
#: Each round also tries the current edit clipped to this fraction of its largest |edit|.
MINIMAX_CLIP = 0.8
#: The lead sets the refinement may try (`_other_leads`): up to this many leads (the
#: target is a median of at most 2), or this many more for a counterfactual that needs
#: more anyway; a new set is kept when it lowers the largest |edit| by this share.
MINIMAX_LEADS = 2
MORE_LEADS = 2
MINIMAX_LEAD_GAIN = 0.1
#: The lead set may change only while the largest |edit|, rounded up to the report's
#: 0.01 mV grid, is at least this (mV): a smaller edit already reads as small, and fewer
#: leads read better.
SMALL_EDIT_MV = 0.3
#: Fractions tried when shrinking a kept edit.
SHRINK = (0.5, 0.75)

LogitFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class Edit:
    """One edit: `delta_mv` is the change of the ST level at J+60 ms (segment ``ST``), of
    the T-wave peak (``T``), or of the median beat's Q trough / R peak (``QRS``, `wave`
    ``Q`` / ``R``). `bound_mv` is the plausibility bound it was searched within (Python
    side only; the JSON carries lead, segment, delta_mv and, for a QRS edit, its wave)."""

    lead: str
    segment: str
    delta_mv: float
    wave: str = ""
    bound_mv: float = 0.0

    def to_json(self) -> dict[str, str | float]:
        out: dict[str, str | float] = {
            "lead": self.lead,
            "segment": self.segment,
            "delta_mv": self.delta_mv,
        }
        if self.segment == "QRS" and self.wave in ("Q", "R"):
            out["wave"] = self.wave
        return out


def edit_bounds(q_mv: npt.ArrayLike, r_mv: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-lead bounds (leads, 4) in mV of the `EDIT_KINDS` from the median Q depth and R
    amplitude of each lead (0: not editable)."""
    q = np.asarray(q_mv, dtype=np.float64)
    r = np.asarray(r_mv, dtype=np.float64)
    q_frac = min(1.0 - Q_SCALE_RANGE[0], Q_SCALE_RANGE[1] - 1.0)
    r_frac = min(1.0 - R_SCALE_RANGE[0], R_SCALE_RANGE[1] - 1.0)
    out = np.zeros((q.shape[0], len(EDIT_KINDS)), dtype=np.float64)
    out[:, 0] = MAX_ST_SHIFT_MV
    out[:, 1] = MAX_T_DELTA_MV
    out[:, 2] = np.where(q >= MIN_WAVE_MV, np.minimum(q_frac * q, MAX_QRS_DELTA_MV), 0.0)
    out[:, 3] = np.where(r >= MIN_WAVE_MV, np.minimum(r_frac * r, MAX_QRS_DELTA_MV), 0.0)
    return np.floor(out * 100.0 + 1e-9) / 100.0  # on the 0.01 mV grid of the report


def logit_threshold(calibrator: Calibrator, threshold: float) -> float:
    """The mean-logit z at which the (monotone increasing) calibration reaches `threshold`:
    decision positive iff z >= the value (to bisection precision)."""
    lo, hi = -60.0, 60.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(calibrator(mid)) >= threshold:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class EditSpace:
    """The linear map from edit parameters to model input.

    `x0` (12, n): the preprocessed record before the final clip; `basis` (12, 4, n): the
    preprocessed shape of each lead's edit kinds; `mixing` (12, 12): model-lead change per
    edited lead (the identity, plus the derivation of missing limb leads); `bounds` (12, 4)
    mV, 0 where a unit is not editable (a derived lead, an absent segment or wave)."""

    x0: torch.Tensor
    basis: torch.Tensor
    mixing: torch.Tensor
    bounds: npt.NDArray[np.float64]
    clip: float

    def inputs(self, edits: torch.Tensor) -> torch.Tensor:
        """Edit matrices (B, 12, 4) in mV -> model inputs (B, 12, n)."""
        per_lead = torch.einsum("blk,lkn->bln", edits, self.basis)
        change = torch.einsum("ml,bln->bmn", self.mixing, per_lead)
        return torch.clamp(self.x0 + change, -self.clip, self.clip)


@dataclass(frozen=True)
class SearchResult:
    """The edit matrix (12, 4) in mV, the order edits were added in ((lead, kind index)),
    the model's mean MI logit before and after, and whether the search crossed;
    `unrefined`: the crossing edit before the refinements (steps 4-6 of the module
    docstring), None when the search did not cross."""

    edits: npt.NDArray[np.float64]
    order: tuple[tuple[int, int], ...]
    z_before: float
    z_after: float
    crossed: bool
    n_evaluations: int
    unrefined: npt.NDArray[np.float64] | None = None


class _Problem:
    """One search: the logit function on edit matrices, the target and its direction."""

    def __init__(self, logit_fn: LogitFn, space: EditSpace, task: int) -> None:
        self.logit_fn, self.space, self.task = logit_fn, space, task
        self.n_evals = 0
        self.sign = 1.0
        self.target = 0.0

    def evaluate(self, batch: torch.Tensor) -> npt.NDArray[np.float64]:
        self.n_evals += int(batch.shape[0])
        with torch.no_grad():
            out: npt.NDArray[np.float64] = (
                self.logit_fn(self.space.inputs(batch))[:, self.task].double().numpy()
            )
        return out

    def value_and_grad(self, d: torch.Tensor) -> tuple[float, npt.NDArray[np.float64]]:
        self.n_evals += 1
        p = d[None].clone().requires_grad_(True)
        z = self.logit_fn(self.space.inputs(p))[0, self.task]
        (g,) = torch.autograd.grad(z, p)
        return float(z.detach()), g[0].double().numpy()

    def values_and_grads(
        self, batch: torch.Tensor
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Logits (B,) and their gradients (B, 12, 4) of a batch of edit matrices."""
        self.n_evals += int(batch.shape[0])
        p = batch.clone().requires_grad_(True)
        z = self.logit_fn(self.space.inputs(p))[:, self.task]
        (g,) = torch.autograd.grad(z.sum(), p)
        return z.detach().double().numpy(), g.double().numpy()

    def crossed(self, z: npt.NDArray[np.float64] | float) -> npt.NDArray[np.bool_]:
        zz = np.asarray(z, dtype=np.float64)
        out: npt.NDArray[np.bool_] = self.sign * (zz - self.target) >= 0.0
        return out


def search(
    logit_fn: LogitFn,
    space: EditSpace,
    *,
    task: int,
    z_threshold: float,
    max_edits: int = MAX_EDITS,
) -> SearchResult:
    """Greedy gradient-ranked selection, pruning, minimax refinement over the kept units
    and then over the chosen leads, and shrinking (module docstring) of the edit that moves
    the mean logit of `task` across `z_threshold`, from positive to negative or back."""
    pb = _Problem(logit_fn, space, task)
    d = torch.zeros(space.x0.shape[0], len(EDIT_KINDS), dtype=torch.float32)
    z0, grad = pb.value_and_grad(d)
    positive = z0 >= z_threshold
    pb.sign = -1.0 if positive else 1.0  # the direction the logit must move
    pb.target = z_threshold + pb.sign * MARGIN_LOGIT

    order: list[tuple[int, int]] = []
    blocked = space.bounds <= 0.0
    z = z0
    fractions = np.asarray(GRID)
    while not pb.crossed(z) and len(order) < max_edits:
        score = np.where(blocked, -1.0, np.abs(grad) * np.minimum(space.bounds, RANK_MV))
        lead, kind = (int(v) for v in np.unravel_index(int(np.argmax(score)), score.shape))
        if score[lead, kind] <= 0.0:
            break
        blocked[lead, kind] = True
        direction = float(np.sign(pb.sign * grad[lead, kind]))
        values = direction * fractions * space.bounds[lead, kind]
        batch = d[None].repeat(len(values), 1, 1)
        batch[:, lead, kind] = torch.from_numpy(values).float()
        zs = pb.evaluate(batch)
        hits = np.flatnonzero(pb.crossed(zs))
        if hits.size:
            hit = int(hits[np.argmin(np.abs(values[hits]))])
            d, z = batch[hit].clone(), float(zs[hit])
            order.append((lead, kind))
            break
        best = int(np.argmax(pb.sign * zs))
        if pb.sign * zs[best] <= pb.sign * z:
            continue  # this edit does not help: try the next candidate
        d = batch[best].clone()
        order.append((lead, kind))
        if kind in _QRS_KINDS:  # one QRS wave per lead
            blocked[lead, list(_QRS_KINDS)] = True
        z, grad = pb.value_and_grad(d)
    if not pb.crossed(z):
        d, order, z = _joint(pb, d)
    if not pb.crossed(z):
        return SearchResult(d.double().numpy(), tuple(order), z0, z, False, pb.n_evals)
    d, order, z = _prune(pb, d, order, z)
    unrefined = d.double().numpy()
    d, z = _refine(pb, d, order, z)
    d, order, z = _minimax(pb, d, order, z)
    d, z = _shrink(pb, d, order, z)
    return SearchResult(d.double().numpy(), tuple(order), z0, z, True, pb.n_evals, unrefined)


def _joint(pb: _Problem, d: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]], float]:
    """Fallback when the greedy search runs out of edits: signed-gradient steps on every
    editable unit at once, inside the bounds, from the greedy's edit, until the logit
    crosses (at most `JOINT_STEPS`); then only the units that carry the flip are kept: the
    fewest of them, by contribution ``|gradient * edit|``, whose edit alone still crosses
    (one batch)."""
    bounds = torch.from_numpy(pb.space.bounds).float()
    z, grad = pb.value_and_grad(d)
    for _ in range(JOINT_STEPS):
        if pb.crossed(z):
            break
        step = JOINT_STEP * bounds * torch.from_numpy(np.sign(pb.sign * grad)).float()
        d = torch.clamp(d + step, -bounds, bounds)
        z, grad = pb.value_and_grad(d)
    if not pb.crossed(z):
        return d, [], z
    contribution = np.abs(grad * d.double().numpy()).ravel()
    units: list[tuple[int, int]] = []
    for u in np.argsort(-contribution):
        lead, kind = int(u) // len(EDIT_KINDS), int(u) % len(EDIT_KINDS)
        qrs_taken = kind in _QRS_KINDS and any(
            m == lead and k in _QRS_KINDS for m, k in units
        )  # one QRS wave per lead: the one that contributes more
        if contribution[u] > 0.0 and not qrs_taken:
            units.append((lead, kind))
    sizes = [k for k in JOINT_KEEP if k < len(units)] + [len(units)]
    batch = torch.zeros((len(sizes), *d.shape), dtype=torch.float32)
    for i, k in enumerate(sizes):
        for lead, kind in units[:k]:
            batch[i, lead, kind] = d[lead, kind]
    zs = pb.evaluate(batch)
    ok = np.flatnonzero(pb.crossed(zs))
    i = int(ok[0]) if ok.size else len(sizes) - 1
    return batch[i].clone(), units[: sizes[i]], float(zs[i])


def _prune(
    pb: _Problem, d: torch.Tensor, order: list[tuple[int, int]], z: float
) -> tuple[torch.Tensor, list[tuple[int, int]], float]:
    """Drop edits the flip does not need, the one whose removal keeps the logit furthest
    past the target first (at most `PRUNE_MAX` edits: a batch per edit per round)."""
    while 1 < len(order) <= PRUNE_MAX:
        batch = d[None].repeat(len(order), 1, 1)
        for i, (lead, kind) in enumerate(order):
            batch[i, lead, kind] = 0.0
        zs = pb.evaluate(batch)
        ok = np.flatnonzero(pb.crossed(zs))
        if not ok.size:
            break
        drop = int(ok[int(np.argmax(pb.sign * (zs[ok] - pb.target)))])
        d, z = batch[drop].clone(), float(zs[drop])
        order.pop(drop)
    return d, order, z


def _refine(
    pb: _Problem, d: torch.Tensor, order: list[tuple[int, int]], z: float
) -> tuple[torch.Tensor, float]:
    """Joint minimax refinement of the kept units (module docstring, step 4)."""
    leads = [u[0] for u in order]
    kinds = [u[1] for u in order]
    bounds = pb.space.bounds[leads, kinds]
    _, grad = pb.value_and_grad(d)
    g = pb.sign * grad[leads, kinds]  # logit gain per mV towards the target
    if not np.any(g != 0.0):
        return d, z
    cur = d[leads, kinds].double().numpy()
    need = pb.sign * (pb.target - z) + float(g @ cur)  # linear gain needed from zero
    t = _radius(np.abs(g), bounds, need)
    largest = float(np.abs(cur).max())
    ts = [min(t * f, largest) for f in REFINE_STEPS if t * f < largest]
    if not ts:
        return d, z
    batch = d[None].repeat(len(ts), 1, 1)
    for i, tt in enumerate(ts):
        batch[i, leads, kinds] = torch.from_numpy(np.sign(g) * np.minimum(tt, bounds)).float()
    zs = pb.evaluate(batch)
    ok = np.flatnonzero(pb.crossed(zs))
    if not ok.size:
        return d, z
    return batch[int(ok[0])].clone(), float(zs[int(ok[0])])


def _lead_units(
    pb: _Problem,
    leads: list[int],
    grad: npt.NDArray[np.float64],
    cap: float,
    keep: list[tuple[int, int]],
) -> list[tuple[int, int]]:
    """Every editable unit of `leads`: ST, T and one QRS wave (the one `keep` already
    edits, else the one whose gradient promises more at `cap`); `keep` first."""
    bounds = pb.space.bounds
    units = list(keep)
    for lead in leads:
        for kind in (0, 1):
            if bounds[lead, kind] > 0.0 and (lead, kind) not in units:
                units.append((lead, kind))
        if not any((lead, k) in units for k in _QRS_KINDS):
            gain = [abs(grad[lead, k]) * min(bounds[lead, k], cap) for k in _QRS_KINDS]
            if max(gain) > 0.0:
                units.append((lead, _QRS_KINDS[int(np.argmax(gain))]))
    return units


def _cap_rounds(
    pb: _Problem,
    d: torch.Tensor,
    z: float,
    units: list[tuple[int, int]],
    start: tuple[torch.Tensor, float, npt.NDArray[np.float64]],
) -> tuple[torch.Tensor, float, float]:
    """`MINIMAX_ROUNDS` rounds of the minimax search on `units` (every other unit at zero),
    below the crossing edit `d` (logit `z`); `start`: the edit, logit and gradient to
    linearise at first. Returns the crossing edit with the smallest cap found (`d` when
    none is below its cap), its logit and its cap."""
    leads = [u[0] for u in units]
    kinds = [u[1] for u in units]
    bounds = pb.space.bounds[leads, kinds]
    mask = torch.zeros_like(d)
    mask[leads, kinds] = 1.0
    cap = float(np.abs(d.double().numpy()).max())
    at_d, at_z, at_g = start
    for r in range(MINIMAX_ROUNDS):
        g = pb.sign * at_g[leads, kinds]  # logit gain per mV towards the target
        gain = np.abs(g)
        # linear gain needed from a zero edit (the units outside `units` drop to zero)
        need = pb.sign * (pb.target - at_z + float(np.sum(at_g * at_d.double().numpy())))
        t = _radius(gain, bounds, need)
        keep = gain * np.minimum(t, bounds) >= MINIMAX_MIN_SHARE * need
        if keep.any():
            t = _radius(np.where(keep, gain, 0.0), bounds, need)
        ts = [t * f for f in MINIMAX_STEPS if keep.any() and t * f < cap - 0.005]
        batch = torch.zeros((len(ts) + 1, *d.shape), dtype=torch.float32)
        for i, tt in enumerate(ts):
            batch[i, leads, kinds] = torch.from_numpy(
                np.where(keep, np.sign(g) * np.minimum(tt, bounds), 0.0)
            ).float()
        # the current edit clipped: progress where the linearisation misleads
        clip_cap = MINIMAX_CLIP * cap
        batch[-1] = torch.clamp(d, -clip_cap, clip_cap) * mask
        ts.append(clip_cap)
        last = r == MINIMAX_ROUNDS - 1
        zs, gs = (pb.evaluate(batch), None) if last else pb.values_and_grads(batch)
        ok = np.flatnonzero(pb.crossed(zs)).tolist()
        if ok:
            i = min(ok, key=lambda k: ts[k])
            d, z, cap = batch[i].clone(), float(zs[i]), float(ts[i])
            below = [k for k in range(len(ts)) if ts[k] < cap]
            j = max(below, key=lambda k: ts[k]) if below else i  # the boundary from below
        else:
            j = int(np.argmax(pb.sign * zs))
        if gs is None:
            break
        at_d, at_z, at_g = batch[j].clone(), float(zs[j]), gs[j]
    return d, z, cap


def _reported(cap: float) -> float:
    """`cap` rounded up to the report's 0.01 mV grid."""
    return float(np.ceil(round(cap * 100.0, 6)) / 100.0)


def _minimax(
    pb: _Problem, d: torch.Tensor, order: list[tuple[int, int]], z: float
) -> tuple[torch.Tensor, list[tuple[int, int]], float]:
    """Minimax refinement over every unit of the chosen leads (module docstring, step 5).
    Per round, linearise the logit and solve for the smallest cap ``t`` such that every
    unit at ``sign(gradient) * min(t, bound)`` crosses (units whose share of the needed
    change would be below `MINIMAX_MIN_SHARE` stay at zero); one batch evaluates ``t``
    times `MINIMAX_STEPS` and the current edit clipped to `MINIMAX_CLIP` of its cap (with
    gradients, to linearise the next round at the boundary), and the smallest crossing cap
    below the current largest |edit| is kept. When the largest |edit| still reports at
    `SMALL_EDIT_MV` or more, the lead set may change (`_other_leads`); a new set is kept
    when it lowers the cap by `MINIMAX_LEAD_GAIN` or more. The largest |edit| never grows.
    Returns the edit, its units in order (`order`'s first, zero edits left out), and the
    logit."""
    leads = list(dict.fromkeys(m for m, _ in order))
    cap = float(np.abs(d.double().numpy()).max())
    z_at, grad = pb.value_and_grad(d)
    units = _lead_units(pb, leads, grad, cap, order)
    d, z, cap = _cap_rounds(pb, d, z, units, (d, z_at, grad))
    if _reported(cap) >= SMALL_EDIT_MV:
        z_at, grad = pb.value_and_grad(d)
        other = _other_leads(pb, leads, grad, cap)
        if other is not None:
            more = _lead_units(pb, other, grad, cap, [u for u in units if u[0] in other])
            d2, z2, cap2 = _cap_rounds(pb, d, z, more, (d, z_at, grad))
            if cap2 <= cap * (1.0 - MINIMAX_LEAD_GAIN):
                d, z, units = d2, z2, more
    dn = d.double().numpy()
    kept = [u for u in order if dn[u] != 0.0]
    return d, kept + [u for u in units if u not in kept and dn[u] != 0.0], z


def _other_leads(
    pb: _Problem, leads: list[int], grad: npt.NDArray[np.float64], cap: float
) -> list[int] | None:
    """The lead set the refinement tries next (None: none), by the logit change each lead's
    units promise at `cap` (ST, T and the better QRS wave): a counterfactual on fewer than
    `MINIMAX_LEADS` leads is filled up to that many; one on exactly that many tries the
    `MINIMAX_LEADS` most promising leads instead (when they differ); one that needs more
    leads anyway may take `MORE_LEADS` more."""
    promise = np.abs(grad) * np.minimum(pb.space.bounds, cap)
    per_lead = promise[:, 0] + promise[:, 1] + promise[:, list(_QRS_KINDS)].max(axis=1)
    ranked = [int(m) for m in np.argsort(-per_lead) if per_lead[m] > 0.0]
    if len(leads) == MINIMAX_LEADS:
        best = ranked[:MINIMAX_LEADS]
        return best if len(best) == MINIMAX_LEADS and set(best) != set(leads) else None
    n = MINIMAX_LEADS - len(leads) if len(leads) < MINIMAX_LEADS else MORE_LEADS
    extra = [m for m in ranked if m not in leads][:n]
    return leads + extra if extra else None


def _radius(gain: npt.NDArray[np.float64], bounds: npt.NDArray[np.float64], need: float) -> float:
    """The smallest t with ``sum(gain * min(t, bounds)) >= need`` (the largest bound when
    even that is not enough)."""
    if need <= 0.0:
        return 0.0
    cuts = np.unique(np.concatenate([[0.0], bounds]))
    for lo, hi in itertools.pairwise(cuts.tolist()):
        at_hi = float(np.sum(gain * np.minimum(hi, bounds)))
        if at_hi >= need:
            at_lo = float(np.sum(gain * np.minimum(lo, bounds)))
            slope = float(np.sum(gain[bounds > lo]))
            return float(lo + (need - at_lo) / slope) if slope > 0 else float(hi)
    return float(cuts[-1])


def _shrink(
    pb: _Problem, d: torch.Tensor, order: list[tuple[int, int]], z: float
) -> tuple[torch.Tensor, float]:
    """Shrink the edits at the largest |edit|, one at a time, to the smallest `SHRINK`
    fraction that still crosses; stop at the first that cannot shrink (the largest |edit|
    then stays)."""
    shrink = torch.tensor(SHRINK, dtype=torch.float32)
    cap = max(abs(float(d[u])) for u in order)
    for lead, kind in order:
        if abs(float(d[lead, kind])) < cap - 0.005:
            continue  # shrinking it cannot lower the largest |edit|
        batch = d[None].repeat(len(SHRINK), 1, 1)
        batch[:, lead, kind] = d[lead, kind] * shrink
        zs = pb.evaluate(batch)
        ok = np.flatnonzero(pb.crossed(zs))
        if not ok.size:
            break
        d, z = batch[int(ok[0])].clone(), float(zs[int(ok[0])])
    return d, z


def round_away(
    edits: npt.NDArray[np.float64], bounds: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Edits rounded to 0.01 mV away from zero (so rounding never weakens the flip), then
    clipped to the bounds (which lie on the 0.01 mV grid)."""
    out = np.sign(edits) * np.ceil(np.round(np.abs(edits) * 100.0, 6)) / 100.0
    clipped: npt.NDArray[np.float64] = np.clip(out, -bounds, bounds)
    return clipped
