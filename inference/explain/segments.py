"""Where the waves are: delineation -> per-sample segment labels on the model's grid, the
smooth edit shapes of the counterfactual explainer, and the measurements contract.

The model sees `preprocess` of the record: resampled to ``conf.fs_hz`` by a polyphase filter
(``up/down``), band-passed, then centre-cropped or zero-padded to ``conf.n_samples``.
`ModelGrid` replays that index arithmetic, so a sample of the record (at its own rate) has a
known place on the model's input, and a model sample a known time in the recording.

Edit shapes (at the record's own rate, >= 0, continuous, no step anywhere; ST and T in [0, 1]):

* ST: raised-cosine rise over the first `EDGE_MS` after the J point, plateau (= 1) up to the
  T onset, raised-cosine fall over the `EDGE_MS` after the T onset. The delineation makes ST at
  least 80 ms long, so the plateau always holds J+60 ms: an ST edit of ``d`` mV moves the ST
  level at J+60 ms by exactly ``d``.
* T: a raised-cosine bump from T onset through T peak (= 1) to T end, each flank at least
  `EDGE_MS` long: a T edit of ``d`` mV moves the T peak by exactly ``d``.
* Q and R (per lead, `qrs_shapes`): the lead's own initial negative QRS deflection and the
  positive part of its QRS, measured from the PR level, with raised-cosine ends of
  `QRS_EDGE_MS`, divided by the median beat's peak: scaling the real waves, not adding
  synthetic ones.

Beats where the segment is absent get no edit; overlapping beats take the maximum, never the
sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TypedDict

import numpy as np
import numpy.typing as npt

from inference.delineation import BeatBoundaries, Delineation, Segment
from inference.preprocess import PreprocessConf

#: Attribution segments, in label order (label value = index in this tuple; -1 = none).
SEGMENTS: tuple[Segment, ...] = (Segment.P, Segment.QRS, Segment.ST, Segment.T)
#: Length of each raised-cosine edge of an edit.
EDGE_MS = 20.0

FloatArray = npt.NDArray[np.float64]
LabelArray = npt.NDArray[np.int8]


class LeadMeasuresJson(TypedDict):
    st_mv: float | None
    t_mv: float | None
    qrs_ms: float | None


class MeasurementsJson(TypedDict):
    """The ``ecgbridge analyze --json`` "measurements" contract."""

    per_lead: dict[str, LeadMeasuresJson]
    hr_bpm: float | None
    qtc_ms: float | None


def measurements(delineation: Delineation) -> MeasurementsJson:
    """Per-lead ST at J+60 ms, T amplitude (mV) and QRS duration (ms), heart rate, QTc
    (Bazett) from a delineation; None where not measurable."""
    return {
        "per_lead": {
            m.lead: {"st_mv": m.st_mv, "t_mv": m.t_mv, "qrs_ms": m.qrs_ms}
            for m in delineation.leads
        },
        "hr_bpm": delineation.hr_bpm,
        "qtc_ms": delineation.qtc_ms,
    }


@dataclass(frozen=True, slots=True)
class ModelGrid:
    """The map between a record's samples (at `fs_hz`) and the model's input samples.

    Model index = round(record index * up / down) + `offset` (negative when the resampled
    record is cropped, positive when it is padded)."""

    fs_hz: float
    model_fs_hz: float
    n_record: int
    n_model: int
    up: int
    down: int
    offset: int

    def to_model(self, index: npt.ArrayLike) -> npt.NDArray[np.int64]:
        i = np.asarray(index, dtype=np.float64)
        out: npt.NDArray[np.int64] = (np.rint(i * self.up / self.down) + self.offset).astype(
            np.int64
        )
        return out

    def to_seconds(self, model_index: int) -> float:
        """Seconds from the start of the recording of a model sample."""
        return (model_index - self.offset) / self.model_fs_hz

    def visible(self, start: int, end: int) -> bool:
        """Whether the record span ``[start, end)`` overlaps the model's window."""
        a, b = self.to_model([start, end])
        return bool(b > 0 and a < self.n_model)


def model_grid(fs_hz: float, n_record: int, conf: PreprocessConf) -> ModelGrid:
    """The grid `preprocess(signals, fs_hz, conf)` puts a record of `n_record` samples on."""
    if abs(fs_hz - conf.fs_hz) > 1e-9:
        ratio = Fraction(conf.fs_hz / fs_hz).limit_denominator(1000)
        up, down = ratio.numerator, ratio.denominator
        n_res = math.ceil(n_record * up / down)
    else:
        up, down, n_res = 1, 1, n_record
    target = conf.n_samples
    offset = -((n_res - target) // 2) if n_res >= target else (target - n_res) // 2
    return ModelGrid(float(fs_hz), conf.fs_hz, n_record, target, up, down, offset)


def segment_labels(beats: BeatBoundaries, grid: ModelGrid) -> LabelArray:
    """Per model sample, the index in `SEGMENTS` of the segment it lies in, or -1.

    Spans are mapped from the record's rate; later segments of `SEGMENTS` win the (at most
    one-sample) overlaps that rounding can make, so each sample has one label."""
    labels = np.full(grid.n_model, -1, dtype=np.int8)
    for k, seg in enumerate(SEGMENTS):
        for s, e in beats.spans(seg):
            a, b = grid.to_model([s, e])
            a, b = max(int(a), 0), min(int(b), grid.n_model)
            if b > a:
                labels[a:b] = k
    return labels


def _ramp(n: int) -> FloatArray:
    """Raised-cosine rise over `n` samples, from just above 0 to just below 1."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    out: FloatArray = 0.5 - 0.5 * np.cos(np.pi * t)
    return out


def _put(shape: FloatArray, start: int, values: FloatArray) -> None:
    """shape[start:start+len] = max(shape, values), clipped to the array."""
    n = shape.shape[0]
    a, b = max(start, 0), min(start + values.shape[0], n)
    if b > a:
        shape[a:b] = np.maximum(shape[a:b], values[a - start : b - start])


def st_shape(beats: BeatBoundaries, n_samples: int, fs_hz: float) -> FloatArray:
    """The ST edit shape (see the module docstring), shape (n_samples,)."""
    edge = max(2, round(EDGE_MS * fs_hz / 1000.0))
    shape = np.zeros(n_samples, dtype=np.float64)
    for j, t_on in zip(beats.qrs_off, beats.t_on, strict=True):
        j, t_on = int(j), int(t_on)
        if t_on <= j:
            continue
        plateau = max(t_on - j - edge, 0)
        values = np.concatenate([_ramp(edge), np.ones(plateau), _ramp(edge)[::-1]])
        _put(shape, j, values)
    return shape


def t_shape(beats: BeatBoundaries, n_samples: int, fs_hz: float) -> FloatArray:
    """The T edit shape (see the module docstring), shape (n_samples,)."""
    edge = max(2, round(EDGE_MS * fs_hz / 1000.0))
    shape = np.zeros(n_samples, dtype=np.float64)
    for t_on, t_peak, t_off in zip(beats.t_on, beats.t_peak, beats.t_off, strict=True):
        on, peak, off = int(t_on), int(t_peak), int(t_off)
        if on < 0 or peak < 0 or off <= on:
            continue
        rise = max(peak - on, edge)
        fall = max(off - peak, edge)
        values = np.concatenate([_ramp(rise), [1.0], _ramp(fall)[::-1]])
        _put(shape, peak - rise, values)
    return shape


#: QRS edits: the level before the QRS (the PR segment) is the mean of this window before
#: QRS onset; deflections within +-`QRS_EPS_MV` of it are noise, not a wave.
PR_WINDOW_MS = 10.0
QRS_EPS_MV = 0.02
#: Raised-cosine taper at both ends of a scaled QRS deflection.
QRS_EDGE_MS = 6.0


@dataclass(frozen=True)
class QrsShapes:
    """Per-lead QRS edit shapes at the record's rate, shape (leads, n), and the median-beat
    peak of each deflection (mV, >= 0; 0 where the lead has no such deflection).

    ``q``: the initial negative deflection (the Q wave, or the whole QS complex) of every
    beat, sign-flipped and divided by the lead's median Q depth, so an edit ``d * q`` raises
    the trough of the median beat's Q by ``d`` mV (d < 0: a deeper Q) and scales every beat's
    Q by the same factor ``1 - d / q_mv``. ``r``: the positive part of the QRS divided by the
    median R amplitude: ``d * r`` changes the median R peak by ``d`` mV, every R by the
    factor ``1 + d / r_mv``. Both are the lead's own waveform times a window with
    raised-cosine ends, so they are as smooth as the ECG itself and zero outside the QRS."""

    q: FloatArray
    r: FloatArray
    q_mv: FloatArray
    r_mv: FloatArray


def _taper(n: int, edge: int) -> FloatArray:
    """1 inside, raised-cosine ends of `edge` samples (shorter for short spans)."""
    e = max(1, min(edge, n // 2))
    w = np.ones(n, dtype=np.float64)
    w[:e] = _ramp(e)
    w[n - e :] = np.minimum(w[n - e :], _ramp(e)[::-1])
    return w


def _beat_deflections(y: FloatArray, edge: int) -> tuple[FloatArray | None, FloatArray]:
    """The (tapered) initial negative deflection of one QRS (None when the QRS starts
    upward) and its positive part, both as offsets from the PR level."""
    above = np.flatnonzero(y > QRS_EPS_MV)
    below = np.flatnonzero(y < -QRS_EPS_MV)
    positive = np.maximum(y, 0.0) * _taper(y.shape[0], edge)
    if below.size == 0 or (above.size and above[0] < below[0]):
        return None, positive
    back = np.flatnonzero(y[below[0] :] >= 0.0)
    end = int(below[0] + back[0]) if back.size else y.shape[0]
    q = np.zeros_like(y)
    q[:end] = np.minimum(y[:end], 0.0) * _taper(end, edge)
    return q, positive


def qrs_shapes(
    signals_mv: npt.NDArray[np.float32], beats: BeatBoundaries, fs_hz: float
) -> QrsShapes:
    """The Q and R edit shapes of every lead of `signals_mv` (leads, n) (see `QrsShapes`).

    A lead gets a Q shape only when at least half its beats start with a negative
    deflection (otherwise ``q_mv`` = 0 and the shape is zero)."""
    n_leads, n = signals_mv.shape
    edge = max(1, round(QRS_EDGE_MS * fs_hz / 1000.0))
    pr = max(1, round(PR_WINDOW_MS * fs_hz / 1000.0))
    q = np.zeros((n_leads, n), dtype=np.float64)
    r = np.zeros((n_leads, n), dtype=np.float64)
    q_mv = np.zeros(n_leads, dtype=np.float64)
    r_mv = np.zeros(n_leads, dtype=np.float64)
    spans = [(int(s), int(e)) for s, e in zip(beats.qrs_on, beats.qrs_off, strict=True)]
    spans = [(s, e) for s, e in spans if s >= 1 and e > s + 2 and e <= n]
    if not spans:
        return QrsShapes(q, r, q_mv, r_mv)
    for lead in range(n_leads):
        v = signals_mv[lead].astype(np.float64)
        depths: list[float] = []
        heights: list[float] = []
        for s, e in spans:
            y = v[s:e] - float(v[max(s - pr, 0) : s].mean())
            qd, rd = _beat_deflections(y, edge)
            r[lead, s:e] = rd
            heights.append(float(rd.max()))
            if qd is not None:
                q[lead, s:e] = -qd
                depths.append(float(qd.min()) * -1.0)
        r_mv[lead] = float(np.median(heights))
        if 2 * len(depths) >= len(spans):
            q_mv[lead] = float(np.median(depths))
        q[lead] = q[lead] / q_mv[lead] if q_mv[lead] > 0 else 0.0
        r[lead] = r[lead] / r_mv[lead] if r_mv[lead] > 0 else 0.0
    return QrsShapes(q, r, q_mv, r_mv)
