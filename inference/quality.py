"""The signal-quality gate: refuse ECGs the model should not judge.

Per lead, on the raw millivolts at the record's own rate:

* lead off / flat line: robust amplitude (1st-99th percentile span of the 0.5-40 Hz
  band-passed signal) below `QualityConf.min_amplitude_mv`;
* saturation / clipping: the signal sits at its own maximum or minimum for a run longer
  than `max_rail_run_s`;
* baseline wander: the < 0.5 Hz component spans more than `max_wander_mv`;
* powerline and high-frequency noise (only when the rate allows): power near 50/60 Hz or
  above 40 Hz larger than the given multiples of the 1-40 Hz ECG band's power.

Thresholds were calibrated on PTB-XL folds 1-8 (2,010 records): in that data the smallest
lead amplitude is 0.09 mV, the longest rail run 0.14 s, the largest wander 12.8 mV, the
largest powerline ratio 0.23 and high-frequency ratio 1.7. With the defaults the gate
refuses 1 of those 2,010 records (0.05%, baseline wander of 3 limb leads); see MODEL_CARD.md.
Any problem refuses the record.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import signal

from inference.result import QualityReport

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QualityConf:
    """Refusal thresholds (units in the names; ratios are power ratios)."""

    min_amplitude_mv: float = 0.04
    max_rail_run_s: float = 0.25
    max_wander_mv: float = 10.0
    max_powerline_ratio: float = 1.0
    max_hf_noise_ratio: float = 3.0


def _longest_run_at_extreme_s(x: npt.NDArray[np.float64], fs_hz: float) -> npt.NDArray[np.float64]:
    """Per lead, the longest run (seconds) of samples equal to that lead's max or min."""
    out = np.zeros(x.shape[0])
    for extreme in (x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)):
        at = (x == extreme).astype(np.int8)
        edges = np.diff(np.pad(at, ((0, 0), (1, 1))), axis=-1)
        for lead in range(x.shape[0]):
            starts = np.flatnonzero(edges[lead] == 1)
            ends = np.flatnonzero(edges[lead] == -1)
            if starts.size:
                out[lead] = max(out[lead], float((ends - starts).max()))
    return out / fs_hz


@functools.lru_cache(maxsize=16)
def _filters(fs_hz: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The 0.5-40 Hz band-pass and the 0.5 Hz baseline low-pass at `fs_hz` (second-order
    sections), designed once per rate: designing them took a third of this check's time."""
    band = signal.butter(
        3, [0.5, min(40.0, 0.45 * fs_hz)], btype="bandpass", fs=fs_hz, output="sos"
    )
    low = signal.butter(2, 0.5, btype="lowpass", fs=fs_hz, output="sos")
    return band, low  # scipy's sosfilt wants writeable buffers: callers must not change them


def assess_quality(
    signals_mv: npt.NDArray[np.float32],
    fs_hz: float,
    lead_names: Sequence[str],
    conf: QualityConf | None = None,
) -> QualityReport:
    """Judge one ECG (n_leads, n) in mV; `ok` is False when any problem is found."""
    conf = conf or QualityConf()
    x = np.asarray(signals_mv, dtype=np.float64)
    names = list(lead_names)
    problems: list[str] = []
    nyquist = fs_hz / 2

    band, low = _filters(fs_hz)
    bp = signal.sosfiltfilt(band, x, axis=-1)
    lo, hi = np.percentile(bp, [1, 99], axis=-1)
    amplitude = hi - lo
    flat = amplitude < conf.min_amplitude_mv
    for lead in np.flatnonzero(flat):
        problems.append(f"{names[lead]} lead off")

    rail = _longest_run_at_extreme_s(x, fs_hz)
    for lead in np.flatnonzero((rail > conf.max_rail_run_s) & ~flat):
        problems.append(f"{names[lead]} saturated")

    baseline = signal.sosfiltfilt(low, x, axis=-1)
    wander = baseline.max(axis=-1) - baseline.min(axis=-1)
    for lead in np.flatnonzero(wander > conf.max_wander_mv):
        problems.append(f"{names[lead]} baseline wander")

    if nyquist > 62.0:
        freqs, power = signal.welch(x, fs=fs_hz, nperseg=min(x.shape[-1], round(2 * fs_hz)))
        ecg = power[:, (freqs > 1) & (freqs < 40)].sum(axis=-1) + 1e-12
        mains = (np.abs(freqs - 50) < 2) | (np.abs(freqs - 60) < 2)
        powerline = power[:, mains].sum(axis=-1) / ecg
        hf = power[:, freqs > 40].sum(axis=-1) / ecg - powerline
        for lead in np.flatnonzero((powerline > conf.max_powerline_ratio) & ~flat):
            problems.append(f"{names[lead]} powerline noise")
        for lead in np.flatnonzero((hf > conf.max_hf_noise_ratio) & ~flat):
            problems.append(f"{names[lead]} high-frequency noise")

    if problems:
        logger.debug("quality gate: %d problem(s): %s", len(problems), problems)
    return QualityReport(ok=not problems, problems=tuple(problems))
