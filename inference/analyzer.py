"""The analyzer: quality gate -> lead mapping -> preprocessing -> model -> `AnalysisResult`.

One batched model call per `analyze_batch` (CPU or CUDA; the device comes from the caller or
the settings, ``cuda`` when available). The ensemble's member logits become calibrated
probabilities and an uncertainty per output (`inference.scoring`); every head present in the
weights is reported: MI/injury triage, territories, ischaemia, rhythm. Stenosis is reported
only from site fine-tuned weights whose validation passed (`inference.site_finetune`);
otherwise it is "not assessed".

Deterministic: the same record gives the same probabilities. A batch of n and n batches of
one agree to float rounding only (tests allow 1e-5). `analyze` raises `EcgValidationError`
(field ``lead_names``) when the record lacks a lead the model needs and cannot derive (see
`inference.preprocess.to_model_leads`); a record the quality gate refuses comes back with
``triage=None``, no territories and ``quality.ok=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import torch

from inference.ensemble import STENOSIS_VESSELS, EcgEnsemble, predict_logits, sigmoid
from inference.errors import DeviceUnavailableError, ModelError
from inference.fairness import FairnessModel, load_fairness
from inference.labels import ISCHEMIA_TASK, RHYTHMS, TASK_VESSEL
from inference.preprocess import preprocess, to_model_leads
from inference.quality import QualityConf, assess_quality
from inference.record import LEADS_12, EcgRecord
from inference.registry import DEFAULT_WEIGHTS, Weights
from inference.result import (
    STENOSIS_NOT_ASSESSED,
    AnalysisResult,
    IschemiaResult,
    QualityReport,
    RhythmFinding,
    StenosisAssessment,
    StenosisFinding,
    TerritoryFinding,
    TriageResult,
)
from inference.scoring import Scores, score

logger = logging.getLogger(__name__)

_UNVALIDATED_STENOSIS = "not assessed: the loaded site stenosis head did not pass its validation"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


#: The device names `resolve_device` accepts (``auto``: ``cuda`` when available, else ``cpu``).
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str | None) -> str:
    """``auto`` (or None) -> `default_device`; ``cpu``; ``cuda`` (also ``cuda:N``) only when
    torch sees a CUDA device. Raises `DeviceUnavailableError` for cuda without one or an
    unknown name."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        return default_device()
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {name!r} was asked for but torch sees no CUDA device "
                f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'})"
            )
        return name
    raise DeviceUnavailableError(f"unknown device {requested!r}; use one of {', '.join(DEVICES)}")


class Analyzer:
    """A loaded model with its preprocessing, calibration and operating points. Build with
    `load`."""

    def __init__(
        self,
        model: EcgEnsemble,
        weights: Weights,
        *,
        device: str,
        quality_conf: QualityConf | None = None,
        fairness: FairnessModel | None = None,
        group_thresholds: bool = False,
    ) -> None:
        if group_thresholds and (fairness is None or not fairness.group_thresholds()):
            raise ModelError(
                "fairness_group_thresholds is on but no fairness model with group thresholds "
                f"is fitted for {weights.meta.model_version}"
            )
        self._fairness = fairness
        self._group_thresholds = group_thresholds
        self._model = model
        self._weights = weights
        self._device = device
        self._quality_conf = quality_conf or QualityConf()
        self._task_index = {task: i for i, task in enumerate(weights.meta.tasks)}

    @classmethod
    def load(
        cls,
        weights: Weights | None = None,
        *,
        device: str | None = None,
        num_threads: int | None = None,
        group_thresholds: bool = False,
    ) -> Analyzer:
        """Verify and load `weights` (the shipped model by default) on `device`
        (``"cuda"`` when available, else ``"cpu"``; `resolve_device`). Raises `ModelError`, or
        `DeviceUnavailableError` for ``cuda`` without a CUDA device.

        `num_threads`, when given, sets torch's intra-op threads for the whole process. On a
        busy 2-core CPU one thread is several times faster than two (MODEL_CARD.md, speed).

        The fairness model fitted for the weights (`inference.fairness`), when there is one,
        adds the per-report check; `group_thresholds` makes the MI decision use its per sex x
        age band thresholds (never above the shipped threshold)."""
        weights = weights or DEFAULT_WEIGHTS
        device = resolve_device(device)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        model = weights.load_model(device)
        fairness = load_fairness(weights.meta.model_version)
        return cls(
            model,
            weights,
            device=device,
            fairness=fairness,
            group_thresholds=group_thresholds,
        )

    @property
    def model_version(self) -> str:
        return self._weights.meta.model_version

    @property
    def weights(self) -> Weights:
        return self._weights

    @property
    def model(self) -> EcgEnsemble:
        """The loaded network (eval mode). Callers that need gradients must not change its
        parameters' ``requires_grad`` state; take gradients w.r.t. the input."""
        return self._model

    @property
    def quality_conf(self) -> QualityConf:
        return self._quality_conf

    @property
    def fairness(self) -> FairnessModel | None:
        return self._fairness

    @property
    def device(self) -> str:
        return self._device

    @property
    def group_thresholds(self) -> bool:
        """Whether the MI decision uses the fairness model's per-group thresholds."""
        return self._group_thresholds

    def analyze(self, record: EcgRecord, *, now: datetime | None = None) -> AnalysisResult:
        """Analyse one record (see the module docstring for refusals and errors)."""
        return self.analyze_batch([record], now=now)[0]

    def predict_preprocessed(
        self, inputs: npt.NDArray[np.float32]
    ) -> tuple[Scores, npt.NDArray[np.float64] | None]:
        """All heads for preprocessed inputs (n, 12, n_samples): calibrated scores and the
        stenosis probabilities (n, 3) or None. The step `make bench` times."""
        member_logits, sten_logits = predict_logits(self._model, inputs, device=self._device)
        meta = self._weights.meta
        scores = score(member_logits, meta.tasks, meta.calibration)
        sten = None if sten_logits is None else sigmoid(sten_logits.mean(axis=1))
        return scores, sten

    def analyze_batch(
        self, records: Sequence[EcgRecord], *, now: datetime | None = None
    ) -> list[AnalysisResult]:
        """Analyse many records with one batched model call; results in input order."""
        analysed_at = now or datetime.now(UTC)
        conf = self._weights.meta.preprocess
        qualities: list[QualityReport] = []
        inputs: list[npt.NDArray[np.float32]] = []
        accepted: list[int] = []
        for i, record in enumerate(records):
            leads = to_model_leads(record)
            quality = assess_quality(leads, record.fs_hz, LEADS_12, self._quality_conf)
            qualities.append(quality)
            if quality.ok:
                inputs.append(preprocess(leads, record.fs_hz, conf))
                accepted.append(i)
            else:
                logger.info(
                    "record %s refused by the quality gate: %s",
                    record.record_id,
                    "; ".join(quality.problems),
                )
        scores: Scores | None = None
        sten: npt.NDArray[np.float64] | None = None
        if inputs:
            scores, sten = self.predict_preprocessed(np.stack(inputs))
        row_of = {rec: row for row, rec in enumerate(accepted)}
        return [
            self._result(
                record,
                qualities[i],
                scores,
                sten,
                row_of.get(i),
                analysed_at,
            )
            for i, record in enumerate(records)
        ]

    def _stenosis(self, sten: npt.NDArray[np.float64] | None, row: int) -> StenosisAssessment:
        meta = self._weights.meta
        if meta.stenosis is None or sten is None:
            return STENOSIS_NOT_ASSESSED
        if not meta.stenosis_validated:
            return StenosisAssessment(assessed=False, reason=_UNVALIDATED_STENOSIS)
        thresholds = meta.stenosis.get("thresholds", {})
        return StenosisAssessment(
            assessed=True,
            reason=f"site fine-tuned and validated ({meta.stenosis.get('site', 'site')})",
            findings=tuple(
                StenosisFinding(
                    vessel=v,
                    probability=float(sten[row, j]),
                    threshold=float(thresholds.get(v, 0.5)),
                )
                for j, v in enumerate(STENOSIS_VESSELS)
            ),
        )

    def _result(
        self,
        record: EcgRecord,
        quality: QualityReport,
        scores: Scores | None,
        sten: npt.NDArray[np.float64] | None,
        row: int | None,
        analysed_at: datetime,
    ) -> AnalysisResult:
        meta = self._weights.meta
        method = str(meta.uncertainty.get("method", "none"))
        if scores is None or row is None:
            return AnalysisResult(
                record_id=record.record_id,
                model_version=meta.model_version,
                quality=quality,
                triage=None,
                territories=(),
                analysed_at=analysed_at,
                uncertainty_method=method,
            )

        def head(task: str) -> tuple[float, float, float | None, tuple[float, float] | None]:
            j = self._task_index[task]
            sd = None if scores.sd is None else float(scores.sd[row, j])
            interval = (
                None
                if scores.low is None or scores.high is None
                else (float(scores.low[row, j]), float(scores.high[row, j]))
            )
            return float(scores.probs[row, j]), float(meta.thresholds[task]), sd, interval

        territories = tuple(
            TerritoryFinding(task, vessel, *head(task))
            for task, vessel in TASK_VESSEL.items()
            if task in self._task_index
        )
        ischemia = (
            IschemiaResult(*head(ISCHEMIA_TASK)) if ISCHEMIA_TASK in self._task_index else None
        )
        rhythms = tuple(
            RhythmFinding(code, display, *head(task))
            for task, (code, display) in RHYTHMS.items()
            if task in self._task_index
        )
        triage = TriageResult(*head("mi"))
        fairness = None
        if self._fairness is not None:
            cols = [self._task_index[t] for t in self._fairness.tasks]
            fairness = self._fairness.check(scores.probs[row, cols], record.demographics)
            if self._group_thresholds:
                triage = replace(
                    triage, threshold=self._fairness.threshold_for(record.demographics)
                )
        return AnalysisResult(
            record_id=record.record_id,
            model_version=meta.model_version,
            quality=quality,
            triage=triage,
            territories=territories,
            analysed_at=analysed_at,
            ischemia=ischemia,
            rhythms=rhythms,
            stenosis=None if meta.format == "resnet1d-v0" else self._stenosis(sten, row),
            uncertainty_method=method,
            fairness=fairness,
        )
