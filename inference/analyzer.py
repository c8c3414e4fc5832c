"""The analyzer: quality gate -> lead mapping -> preprocessing -> model -> `AnalysisResult`.

Deterministic: the same record gives the same probabilities. A batch of n and n batches of
one agree to float rounding only (observed differences < 1e-6; tests allow 1e-5).
`analyze` raises `EcgValidationError` (field ``lead_names``) when the record lacks a lead the
model needs and cannot derive (see `inference.preprocess.to_model_leads`); a record the
quality gate refuses comes back with ``triage=None``, no territories and ``quality.ok=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import torch

from inference.labels import TASK_VESSEL
from inference.model import ResNet1d, predict_proba
from inference.preprocess import preprocess, to_model_leads
from inference.quality import QualityConf, assess_quality
from inference.record import LEADS_12, EcgRecord
from inference.registry import DEFAULT_WEIGHTS, Weights
from inference.result import AnalysisResult, QualityReport, TerritoryFinding, TriageResult

logger = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Analyzer:
    """A loaded model with its preprocessing and operating points. Build with `load`."""

    def __init__(
        self,
        model: ResNet1d,
        weights: Weights,
        *,
        device: str,
        quality_conf: QualityConf | None = None,
    ) -> None:
        self._model = model
        self._weights = weights
        self._device = device
        self._quality_conf = quality_conf or QualityConf()
        self._task_index = {task: i for i, task in enumerate(weights.meta.tasks)}

    @classmethod
    def load(cls, weights: Weights | None = None, *, device: str | None = None) -> Analyzer:
        """Verify and load `weights` (the shipped model by default) on `device`
        (``"cuda"`` when available, else ``"cpu"``). Raises `ModelError`."""
        weights = weights or DEFAULT_WEIGHTS
        device = device or default_device()
        model = weights.load_model(device)
        return cls(model, weights, device=device)

    @property
    def model_version(self) -> str:
        return self._weights.meta.model_version

    @property
    def weights(self) -> Weights:
        return self._weights

    @property
    def device(self) -> str:
        return self._device

    def analyze(self, record: EcgRecord, *, now: datetime | None = None) -> AnalysisResult:
        """Analyse one record (see the module docstring for refusals and errors)."""
        return self.analyze_batch([record], now=now)[0]

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
        probs = (
            predict_proba(self._model, np.stack(inputs), device=self._device)
            if inputs
            else np.zeros((0, len(self._task_index)))
        )
        row_of = {rec: row for row, rec in enumerate(accepted)}
        return [
            self._result(
                record, qualities[i], probs[row_of[i]] if i in row_of else None, analysed_at
            )
            for i, record in enumerate(records)
        ]

    def _result(
        self,
        record: EcgRecord,
        quality: QualityReport,
        prob: npt.NDArray[np.float64] | None,
        analysed_at: datetime,
    ) -> AnalysisResult:
        meta = self._weights.meta
        if prob is None:
            return AnalysisResult(
                record_id=record.record_id,
                model_version=meta.model_version,
                quality=quality,
                triage=None,
                territories=(),
                analysed_at=analysed_at,
            )
        mi = self._task_index["mi"]
        territories = tuple(
            TerritoryFinding(
                territory=task,
                vessel=vessel,
                probability=float(prob[self._task_index[task]]),
                threshold=float(meta.thresholds[task]),
            )
            for task, vessel in TASK_VESSEL.items()
        )
        return AnalysisResult(
            record_id=record.record_id,
            model_version=meta.model_version,
            quality=quality,
            triage=TriageResult(
                probability=float(prob[mi]), threshold=float(meta.thresholds["mi"])
            ),
            territories=territories,
            analysed_at=analysed_at,
        )
