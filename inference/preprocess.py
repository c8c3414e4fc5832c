"""Signal preprocessing shared by training, evaluation and the analyzer.

`to_model_leads` puts a record's leads into `LEADS_12` order (deriving the missing limb leads
from I and II by Einthoven's and Goldberger's equations); `preprocess` resamples to the model
rate, band-passes, crops the centre / zero-pads to the model length and scales. The same
`PreprocessConf` travels with the weights (`inference.registry`), so a model always sees the
preprocessing it was trained with.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import signal

from inference.errors import EcgValidationError
from inference.record import LEADS_12, EcgRecord

logger = logging.getLogger(__name__)

_LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")
_PRECORDIAL = ("V1", "V2", "V3", "V4", "V5", "V6")
_CANONICAL = {name.upper(): name for name in LEADS_12}


@dataclass(frozen=True, slots=True)
class PreprocessConf:
    """How raw millivolts become model input.

    Resample to `fs_hz`, zero-phase Butterworth band-pass `low_hz`-`high_hz` of order
    `filter_order`, crop the centre / zero-pad to `duration_s`, then divide by
    `amplitude_scale_mv` and clip to +-`clip`.
    """

    fs_hz: float = 100.0
    duration_s: float = 10.0
    low_hz: float = 0.5
    high_hz: float = 40.0
    filter_order: int = 3
    amplitude_scale_mv: float = 1.0
    clip: float = 20.0

    @property
    def n_samples(self) -> int:
        return round(self.fs_hz * self.duration_s)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreprocessConf:
        return cls(**data)


def _rational(fs_out: float, fs_in: float) -> tuple[int, int]:
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    return ratio.numerator, ratio.denominator


def preprocess(
    signals_mv: npt.NDArray[np.float32], fs_hz: float, conf: PreprocessConf | None = None
) -> npt.NDArray[np.float32]:
    """Raw mV (..., 12, n) at `fs_hz` -> model input (..., 12, conf.n_samples) float32.

    Works on one record (12, n) or a batch (B, 12, n) at one rate; the batch is processed in
    single vectorised calls.
    """
    conf = conf or PreprocessConf()
    x = np.asarray(signals_mv, dtype=np.float64)
    if abs(fs_hz - conf.fs_hz) > 1e-9:
        up, down = _rational(conf.fs_hz, fs_hz)
        x = signal.resample_poly(x, up, down, axis=-1)
    n = x.shape[-1]
    if n > 3 * (conf.filter_order + 1) * 2:
        sos = signal.butter(
            conf.filter_order,
            [conf.low_hz, min(conf.high_hz, 0.45 * conf.fs_hz)],
            btype="bandpass",
            fs=conf.fs_hz,
            output="sos",
        )
        x = signal.sosfiltfilt(sos, x, axis=-1)
    target = conf.n_samples
    if n >= target:
        start = (n - target) // 2
        x = x[..., start : start + target]
    else:
        pad = [(0, 0)] * (x.ndim - 1) + [((target - n) // 2, target - n - (target - n) // 2)]
        x = np.pad(x, pad)
    x = np.clip(x / conf.amplitude_scale_mv, -conf.clip, conf.clip)
    return np.ascontiguousarray(x, dtype=np.float32)


def to_model_leads(record: EcgRecord) -> npt.NDArray[np.float32]:
    """The record's samples in `LEADS_12` order, shape (12, n) float32 mV.

    Lead names match case-insensitively (``AVR`` is ``aVR``). When limb leads are missing but
    I and II are present, III = II - I, aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2.
    Raises `EcgValidationError` (field ``lead_names``) when a precordial lead is missing, or a
    limb lead is missing and I or II is too.
    """
    index: dict[str, int] = {}
    for i, name in enumerate(record.lead_names):
        canonical = _CANONICAL.get(name.strip().upper())
        if canonical is not None and canonical not in index:
            index[canonical] = i
    missing_pre = [name for name in _PRECORDIAL if name not in index]
    if missing_pre:
        raise EcgValidationError(
            f"precordial lead(s) {', '.join(missing_pre)} missing; the model needs V1-V6",
            field="lead_names",
        )
    sig = record.signals_mv
    out = np.empty((len(LEADS_12), sig.shape[1]), dtype=np.float32)
    for row, name in enumerate(LEADS_12):
        if name in index:
            out[row] = sig[index[name]]
    missing_limb = [name for name in _LIMB if name not in index]
    if missing_limb:
        if "I" not in index or "II" not in index:
            raise EcgValidationError(
                f"limb lead(s) {', '.join(missing_limb)} missing and cannot be derived "
                "without leads I and II",
                field="lead_names",
            )
        lead_i, lead_ii = out[0], out[1]
        derived = {
            "III": lead_ii - lead_i,
            "aVR": -(lead_i + lead_ii) / 2,
            "aVL": lead_i - lead_ii / 2,
            "aVF": lead_ii - lead_i / 2,
        }
        for name in missing_limb:
            out[LEADS_12.index(name)] = derived[name]
        logger.debug("record %s: derived limb leads %s", record.record_id, missing_limb)
    return out


def preprocess_batch(
    signals_mv: npt.NDArray[np.float32],
    fs_hz: float,
    conf: PreprocessConf | None = None,
    *,
    chunk: int = 256,
) -> npt.NDArray[np.float32]:
    """`preprocess` over a large (N, 12, n) array in chunks, bounding peak memory."""
    conf = conf or PreprocessConf()
    out = np.empty((signals_mv.shape[0], signals_mv.shape[1], conf.n_samples), dtype=np.float32)
    for start in range(0, signals_mv.shape[0], chunk):
        out[start : start + chunk] = preprocess(signals_mv[start : start + chunk], fs_hz, conf)
    return out
