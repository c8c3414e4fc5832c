"""One entry point for every explanation of a triage decision: `Explainer.explain`.

For one `EcgRecord` and the shipped model it computes (pure computation; the only file read
is the rules file, by `Explainer.load`):

* integrated-gradient attributions of the triage (MI) logit and of each territory logit,
  per (lead, segment) (`inference.explain.attribution`);
* the counterfactual: the smallest per-lead ST / T / QRS (Q-wave depth, R amplitude) edit
  that flips the triage at the shipped threshold, verified by re-scoring the edited record
  through the analyzer (`inference.explain.counterfactual`);
* the distilled IF-THEN rule that fires for the record, with the rule set's fold-9 fidelity
  (`inference.explain.rules`);
* the delineation measurements and the picture's extras (edited signals, highlight spans).

A record the quality gate refuses, or whose delineation fails, gives an `Explanation` with
`reason` set and no attributions or counterfactual; only a record missing a lead the model
needs raises (`EcgValidationError`, as the analyzer does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TypedDict

import numpy as np
import numpy.typing as npt
import torch

from inference.analyzer import Analyzer
from inference.delineation import Delineation, delineate
from inference.ensemble import EcgEnsemble
from inference.errors import EcgValidationError
from inference.explain.attribution import (
    Attribution,
    DeletionResult,
    aggregate,
    deletion_test,
    integrated_gradients,
)
from inference.explain.counterfactual import (
    EDIT_KINDS,
    EDIT_SEGMENTS,
    Edit,
    EditSpace,
    edit_bounds,
    logit_threshold,
    round_away,
    search,
)
from inference.explain.rules import RuleTree, edit_class, features, load_rules
from inference.explain.segments import (
    SEGMENTS,
    LabelArray,
    MeasurementsJson,
    ModelGrid,
    measurements,
    model_grid,
    qrs_shapes,
    segment_labels,
    st_shape,
    t_shape,
)
from inference.labels import TASK_VESSEL
from inference.preprocess import preprocess, to_model_leads
from inference.quality import QualityConf, assess_quality
from inference.record import LEADS_12, EcgRecord

logger = logging.getLogger(__name__)

TRIAGE_TASK = "mi"
METHOD = (
    "integrated gradients (zero baseline, {steps} steps; territories {t_steps}) of the "
    "ensemble-mean logit; per (lead, segment) share of total |IG|"
)
CF_METHOD = (
    "greedy gradient-ranked ST/T/QRS edit search with batched line search, joint fallback, "
    "pruning, minimax refinement over every ST/T/QRS unit of the chosen leads and shrinking"
)
#: Attributions listed in the JSON and highlighted in the picture.
TOP_ATTRIBUTIONS = 5
TOP_HIGHLIGHTS = 3
_DERIVED = {  # limb lead -> coefficients on (I, II), as `to_model_leads` derives them
    "III": (-1.0, 1.0),
    "aVR": (-0.5, -0.5),
    "aVL": (1.0, -0.5),
    "aVF": (-0.5, 1.0),
}


@dataclass(frozen=True, slots=True)
class ExplainConf:
    """Integration steps of the triage and territory IG (0: no territory attributions); how
    many top items to report. 4 steps for the territories: on PTB-XL fold-9 records their
    (lead, segment) shares at 4 steps differ from 64 steps by 0.007-0.037 in total variation
    (8 steps: 0.003-0.010), and each step of each of the three outputs costs a backward
    pass; the 4 steps pay for the counterfactual's QRS edits and refinement within the
    2 s budget."""

    ig_steps: int = 16
    territory_ig_steps: int = 4
    top_attributions: int = TOP_ATTRIBUTIONS
    top_highlights: int = TOP_HIGHLIGHTS


@dataclass(frozen=True, slots=True)
class HighlightSpan:
    """A time span of one lead to shade (seconds from the start of the recording); the
    fields of `mappers.ecg_picture.Highlight`."""

    lead: str
    start_s: float
    end_s: float
    label: str = ""


class CounterfactualJson(TypedDict):
    edits: list[dict[str, str | float]]
    valid: bool
    new_probability: float
    original_probability: float
    method: str


class ExplanationJson(TypedDict):
    attributions: list[dict[str, str | float]]
    counterfactual: CounterfactualJson | None
    rule: str | None
    rule_fidelity: float | None
    method: str
    seconds: float
    reason: str | None


@dataclass(frozen=True)
class Counterfactual:
    """The flipping edit (`edits` in the order the search added them), whether the edited
    record's decision really differs (`valid`), and the probabilities before and after."""

    edits: tuple[Edit, ...]
    valid: bool
    new_probability: float
    original_probability: float
    method: str = CF_METHOD

    def to_json(self) -> CounterfactualJson:
        return {
            "edits": [e.to_json() for e in self.edits],
            "valid": self.valid,
            "new_probability": self.new_probability,
            "original_probability": self.original_probability,
            "method": self.method,
        }


@dataclass(frozen=True)
class Explanation:
    """Everything explained about one record; `to_json` is the wire contract, the other
    fields are the Python-side extras (picture, bench)."""

    record_id: str
    attributions: tuple[Attribution, ...]
    counterfactual: Counterfactual | None
    rule: str | None
    rule_fidelity: float | None
    method: str
    seconds: float
    reason: str | None = None
    #: Every (lead, segment) of the triage IG, largest first (`attributions` is its head).
    all_attributions: tuple[Attribution, ...] = ()
    #: Territory task -> its (lead, segment) attributions, largest first.
    territory_attributions: dict[str, tuple[Attribution, ...]] = field(default_factory=dict)
    #: The record's signals with the counterfactual applied (same shape, float32 mV); the
    #: original signals when there is no edit.
    edited_signals_mv: npt.NDArray[np.float32] | None = None
    highlights: tuple[HighlightSpan, ...] = ()
    measurements: MeasurementsJson | None = None
    #: IG completeness error (sum of attributions - logit difference) of the triage logit.
    ig_gap: float | None = None
    #: Seconds per part: "triage_ig", "territory_ig", "counterfactual".
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> ExplanationJson:
        return {
            "attributions": [a.to_json() for a in self.attributions],
            "counterfactual": None
            if self.counterfactual is None
            else self.counterfactual.to_json(),
            "rule": self.rule,
            "rule_fidelity": self.rule_fidelity,
            "method": self.method,
            "seconds": self.seconds,
            "reason": self.reason,
        }


def measure(record: EcgRecord) -> MeasurementsJson:
    """The delineation measurements of a record (leads in `LEADS_12` order, missing limb
    leads derived). Raises `EcgValidationError` for missing leads or a rate below 100 Hz."""
    return measurements(delineate(to_model_leads(record), record.fs_hz, LEADS_12))


def _record_rows(record: EcgRecord) -> dict[int, int]:
    """Model lead index -> the record's row, for the leads the record carries."""
    rows: dict[int, int] = {}
    upper = [name.strip().upper() for name in record.lead_names]
    for m, name in enumerate(LEADS_12):
        if name.upper() in upper:
            rows[m] = upper.index(name.upper())
    return rows


def _mixing(rows: dict[int, int]) -> npt.NDArray[np.float32]:
    """Model-lead change per edited model lead: identity, plus derived limb leads."""
    w = np.eye(len(LEADS_12), dtype=np.float32)
    for name, (ci, cii) in _DERIVED.items():
        m = LEADS_12.index(name)
        if m not in rows:
            w[m, m] = 0.0
            w[m, 0], w[m, 1] = ci, cii
    return w


class Explainer:
    """Explains the decisions of one loaded `Analyzer`. `rules`: the distilled rule tree
    (None: no rule in the explanations); `Explainer.load` reads the shipped one."""

    def __init__(
        self,
        analyzer: Analyzer,
        rules: RuleTree | None = None,
        *,
        conf: ExplainConf | None = None,
        quality_conf: QualityConf | None = None,
    ) -> None:
        self._analyzer = analyzer
        self._meta = analyzer.weights.meta
        self._rules = rules
        self._conf = conf or ExplainConf()
        self._quality_conf = quality_conf or analyzer.quality_conf
        # The analyzer's own network (eval mode). Gradients are taken with respect to the
        # input only (`torch.autograd.grad(..., inputs)`): the parameters' requires_grad and
        # .grad stay as they are, and the forward passes only read the weights.
        self._model: EcgEnsemble = analyzer.model
        tasks = self._meta.tasks
        self._triage = tasks.index(TRIAGE_TASK)
        self._territories = {t: tasks.index(t) for t in TASK_VESSEL if t in tasks}
        self._z_threshold = logit_threshold(
            self._meta.calibration[TRIAGE_TASK], float(self._meta.thresholds[TRIAGE_TASK])
        )
        self._unclipped = replace(self._meta.preprocess, clip=float("inf"))

    @classmethod
    def load(cls, analyzer: Analyzer, *, conf: ExplainConf | None = None) -> Explainer:
        """An explainer with the rules shipped for the analyzer's model version (none if the
        file is absent; `RulesError` if it is malformed)."""
        return cls(analyzer, load_rules(analyzer.model_version), conf=conf)

    @property
    def rules(self) -> RuleTree | None:
        return self._rules

    @property
    def threshold(self) -> float:
        """The shipped triage threshold (calibrated probability)."""
        return float(self._meta.thresholds[TRIAGE_TASK])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs (B, 12, n) -> ensemble-mean logits (B, tasks)."""
        out: torch.Tensor = self._model(x.to(self._analyzer.device)).mean(dim=1).cpu()
        return out

    def probability(self, signals_mv: npt.NDArray[np.float32], fs_hz: float) -> float:
        """The analyzer's calibrated triage probability of model-lead signals (12, n)."""
        x = preprocess(signals_mv, fs_hz, self._meta.preprocess)
        scores, _ = self._analyzer.predict_preprocessed(x[None])
        return float(scores.probs[0, self._triage])

    def _refused(self, record: EcgRecord, reason: str, t0: float) -> Explanation:
        logger.info("record %s not explained: %s", record.record_id, reason)
        return Explanation(
            record_id=record.record_id,
            attributions=(),
            counterfactual=None,
            rule=None,
            rule_fidelity=None,
            method=self._method(),
            seconds=round(time.perf_counter() - t0, 4),
            reason=reason,
            edited_signals_mv=np.array(record.signals_mv, dtype=np.float32),
        )

    def _method(self) -> str:
        return METHOD.format(steps=self._conf.ig_steps, t_steps=self._conf.territory_ig_steps)

    def explain(
        self, record: EcgRecord, *, attributions: bool = True, counterfactual: bool = True
    ) -> Explanation:
        """Explain the triage decision of `record` (module docstring). `attributions` /
        `counterfactual` False skip those parts (the distillation needs only the second)."""
        t0 = time.perf_counter()
        leads = to_model_leads(record)  # EcgValidationError for missing leads
        quality = assess_quality(leads, record.fs_hz, LEADS_12, self._quality_conf)
        if not quality.ok:
            return self._refused(record, "quality gate refused: " + "; ".join(quality.problems), t0)
        try:
            delin = delineate(leads, record.fs_hz, LEADS_12)
        except EcgValidationError as exc:
            return self._refused(record, f"delineation failed: {exc}", t0)
        if not delin.ok or delin.beats.n_beats < 2:
            return self._refused(
                record, "delineation failed: " + ("; ".join(delin.warnings) or "no beats"), t0
            )
        grid = model_grid(record.fs_hz, record.n_samples, self._meta.preprocess)
        labels = segment_labels(delin.beats, grid)
        x = preprocess(leads, record.fs_hz, self._meta.preprocess)
        scores, _ = self._analyzer.predict_preprocessed(x[None])
        p0 = float(scores.probs[0, self._triage])
        positive = p0 >= float(self._meta.thresholds[TRIAGE_TASK])

        triage_attr: tuple[Attribution, ...] = ()
        territory_attr: dict[str, tuple[Attribution, ...]] = {}
        gap: float | None = None
        timings: dict[str, float] = {}
        t1 = time.perf_counter()
        if attributions:
            ig = integrated_gradients(self.logits, x, [self._triage], steps=self._conf.ig_steps)
            triage_attr = aggregate(ig.attributions[0], labels, LEADS_12)
            gap = float(ig.gap[0])
            timings["triage_ig"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            if self._territories and self._conf.territory_ig_steps > 0:
                names = list(self._territories)
                tig = integrated_gradients(
                    self.logits,
                    x,
                    [self._territories[t] for t in names],
                    steps=self._conf.territory_ig_steps,
                )
                territory_attr = {
                    t: aggregate(tig.attributions[k], labels, LEADS_12) for k, t in enumerate(names)
                }
                timings["territory_ig"] = time.perf_counter() - t1

        cf: Counterfactual | None = None
        edited = np.array(record.signals_mv, dtype=np.float32)
        if counterfactual:
            t1 = time.perf_counter()
            cf, edited = self._counterfactual(record, leads, delin, grid, p0)
            timings["counterfactual"] = time.perf_counter() - t1

        measured = measurements(delin)
        rule: str | None = None
        if self._rules is not None:
            rule = self._rules.rule(features(measured, triage_positive=positive))
        return Explanation(
            record_id=record.record_id,
            attributions=triage_attr[: self._conf.top_attributions],
            counterfactual=cf,
            rule=rule,
            rule_fidelity=None if self._rules is None else self._rules.fidelity,
            method=self._method(),
            seconds=round(time.perf_counter() - t0, 4),
            all_attributions=triage_attr,
            territory_attributions=territory_attr,
            edited_signals_mv=edited,
            highlights=self._highlights(triage_attr, delin, grid, record.fs_hz),
            measurements=measured,
            ig_gap=gap,
            timings=timings,
        )

    def edit_space(
        self, record: EcgRecord, leads: npt.NDArray[np.float32], delin: Delineation
    ) -> tuple[EditSpace, npt.NDArray[np.float64], dict[int, int]]:
        """The counterfactual's edit space of a record, the edit shapes (12, 4, n) per model
        lead and `EDIT_KINDS` at the record's rate, and model lead -> record row."""
        n, fs, n_leads = record.n_samples, record.fs_hz, len(LEADS_12)
        qrs = qrs_shapes(leads, delin.beats, fs)
        shapes = np.empty((n_leads, len(EDIT_KINDS), n), dtype=np.float64)
        shapes[:, 0] = st_shape(delin.beats, n, fs)
        shapes[:, 1] = t_shape(delin.beats, n, fs)
        shapes[:, 2] = qrs.q
        shapes[:, 3] = qrs.r
        rows = _record_rows(record)
        bounds = edit_bounds(qrs.q_mv, qrs.r_mv)
        bounds[[m not in rows for m in range(n_leads)]] = 0.0
        bounds[:, :2] *= shapes[0, :2].max(axis=1) > 0  # no ST / T edit without the segment
        conf = self._unclipped
        flat = shapes.reshape(n_leads * len(EDIT_KINDS), n).astype(np.float32)
        basis = preprocess(flat, fs, conf).reshape(n_leads, len(EDIT_KINDS), -1)
        space = EditSpace(
            x0=torch.from_numpy(preprocess(leads, fs, conf)),
            basis=torch.from_numpy(basis),
            mixing=torch.from_numpy(_mixing(rows)),
            bounds=bounds,
            clip=self._meta.preprocess.clip,
        )
        return space, shapes, rows

    def _counterfactual(
        self,
        record: EcgRecord,
        leads: npt.NDArray[np.float32],
        delin: Delineation,
        grid: ModelGrid,
        p0: float,
    ) -> tuple[Counterfactual, npt.NDArray[np.float32]]:
        fs = record.fs_hz
        space, shapes, rows = self.edit_space(record, leads, delin)
        bounds = space.bounds
        result = search(self.logits, space, task=self._triage, z_threshold=self._z_threshold)
        d = round_away(result.edits, bounds)
        edited = np.array(record.signals_mv, dtype=np.float64)
        for m, row in rows.items():
            edited[row] += d[m] @ shapes[m]
        edited32 = edited.astype(np.float32)
        edits = tuple(
            Edit(
                LEADS_12[m],
                EDIT_SEGMENTS[k].value,
                float(d[m, k]),
                wave=EDIT_KINDS[k],
                bound_mv=float(bounds[m, k]),
            )
            for m, k in result.order
            if d[m, k] != 0.0
        )
        if not edits:
            return Counterfactual((), False, p0, p0), edited32
        new_leads = to_model_leads(replace(record, signals_mv=edited32))
        p1 = self.probability(new_leads, fs)
        threshold = float(self._meta.thresholds[TRIAGE_TASK])
        valid = (p1 >= threshold) != (p0 >= threshold)
        return Counterfactual(edits, valid, p1, p0), edited32

    def first_edit_class(self, explanation: Explanation) -> str | None:
        """The rule tree's class of the explanation's first edit (None without one)."""
        cf = explanation.counterfactual
        if cf is None or not cf.edits:
            return None
        return edit_class(cf.edits[0].lead, cf.edits[0].segment)

    def _highlights(
        self,
        attributions: Sequence[Attribution],
        delin: Delineation,
        grid: ModelGrid,
        fs_hz: float,
    ) -> tuple[HighlightSpan, ...]:
        out: list[HighlightSpan] = []
        for a in attributions[: self._conf.top_highlights]:
            seg = SEGMENTS[[s.value for s in SEGMENTS].index(a.segment)]
            label = f"{a.lead} {a.segment} {100 * a.share:.0f}%"
            for s, e in delin.beats.spans(seg):
                if grid.visible(s, e):
                    out.append(HighlightSpan(a.lead, s / fs_hz, e / fs_hz, label))
        return tuple(out)

    def deletion(
        self, record: EcgRecord, explanation: Explanation, *, k: int = 3, n_random: int = 8
    ) -> DeletionResult | None:
        """The deletion test of the triage attributions of `explanation` (None when it has
        none)."""
        if not explanation.all_attributions:
            return None
        leads = to_model_leads(record)
        delin = delineate(leads, record.fs_hz, LEADS_12)
        grid = model_grid(record.fs_hz, record.n_samples, self._meta.preprocess)
        labels: LabelArray = segment_labels(delin.beats, grid)
        x = preprocess(leads, record.fs_hz, self._meta.preprocess)
        return deletion_test(
            self.logits,
            x,
            labels,
            explanation.all_attributions,
            LEADS_12,
            output=self._triage,
            k=k,
            n_random=n_random,
        )
