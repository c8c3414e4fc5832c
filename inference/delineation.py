"""ECG delineation and measurements: R peaks, per-beat P / QRS / ST / T boundaries, and the
per-lead measurements the explanations speak in (ST at J+60 ms, T amplitude, QRS duration).

Method (pure numpy/scipy, no model):

* **R peaks** on all leads together: each lead is band-passed (5-15 Hz), differentiated and
  scaled to a robust amplitude; the squared slopes are averaged over leads and smoothed over
  100 ms (a multi-lead Pan-Tompkins energy). Candidate peaks at least 250 ms apart are kept
  when above 30 % of the local (±8 s) typical beat energy; long gaps are searched back at half
  that threshold. Each peak is then moved to the largest band-passed deflection within ±60 ms.
* **Global boundaries per beat** from the spatial velocity (the root of the summed squared
  slopes of the 40 Hz low-passed leads): QRS onset and offset (= J point) where the velocity
  falls below 12 % of its QRS maximum. The isoelectric level of each lead is the mean of the
  PR segment (30 ms ending 10 ms before QRS onset); a baseline through those knots is removed.
  T peak is the maximum of the spatial magnitude (RMS over leads) in the T window, T end and
  T onset come from the tangent method on that magnitude; P is searched before the QRS and
  reported only where its magnitude clearly exceeds the noise.
* **Measurements** per beat, then the median over beats: ST level at J+60 ms (mean of ±10 ms)
  relative to the PR baseline, T amplitude (signed extreme of the T window), per-lead QRS
  duration (the lead's own slope threshold inside the global QRS), RR, QT; QTc by Bazett
  (QT / sqrt(RR)) and Fridericia (QT / RR^(1/3)) on the median QT and RR.

Values that cannot be measured are ``None`` (never NaN); ``ok`` is False and ``warnings`` says
why when the recording has fewer than two beats, is flat, or the rate is implausible.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict

import numpy as np
import numpy.typing as npt
from scipy import signal as sps

from inference.errors import EcgValidationError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Points measured after the J point for the ST level (AHA/ACCF/HRS 2009: J+60 ms).
ST_OFFSET_MS = 60.0
MIN_RR_S = 0.25
_QRS_VELOCITY_FRACTION = 0.12
_LEAD_QRS_FRACTION = 0.15


class Segment(StrEnum):
    """The waves and intervals a beat is divided into for attributions and edits."""

    P = "P"
    QRS = "QRS"
    ST = "ST"
    T = "T"


@dataclass(frozen=True, slots=True)
class BeatBoundaries:
    """Per-beat boundaries in samples, global over leads; arrays of shape (n_beats,).

    Intervals are half-open ``[start, end)``. P is absent where ``p_on == -1``.
    Segments: P = [p_on, p_off), QRS = [qrs_on, qrs_off), ST = [qrs_off, t_on),
    T = [t_on, t_off). ``qrs_off`` is the J point.
    """

    r: IntArray
    p_on: IntArray
    p_off: IntArray
    qrs_on: IntArray
    qrs_off: IntArray
    t_on: IntArray
    t_peak: IntArray
    t_off: IntArray

    @property
    def n_beats(self) -> int:
        return int(self.r.shape[0])

    def spans(self, segment: Segment) -> list[tuple[int, int]]:
        """The ``(start, end)`` sample spans of one segment over all beats where it exists."""
        start, end = {
            Segment.P: (self.p_on, self.p_off),
            Segment.QRS: (self.qrs_on, self.qrs_off),
            Segment.ST: (self.qrs_off, self.t_on),
            Segment.T: (self.t_on, self.t_off),
        }[segment]
        return [(int(s), int(e)) for s, e in zip(start, end, strict=True) if s >= 0 and e > s]

    def mask(self, segment: Segment, n_samples: int) -> npt.NDArray[np.bool_]:
        """Boolean mask of shape (n_samples,) that is True inside the segment of every beat."""
        out = np.zeros(n_samples, dtype=bool)
        for s, e in self.spans(segment):
            out[max(s, 0) : min(e, n_samples)] = True
        return out


@dataclass(frozen=True, slots=True)
class LeadMeasurements:
    """Median over beats of one lead's measurements; None where not measurable."""

    lead: str
    st_mv: float | None
    t_mv: float | None
    qrs_ms: float | None


class LeadMeasurementsJson(TypedDict):
    st_mv: float | None
    t_mv: float | None
    qrs_ms: float | None


class DelineationJson(TypedDict):
    per_lead: dict[str, LeadMeasurementsJson]
    hr_bpm: float | None
    rr_ms: float | None
    qrs_ms: float | None
    qt_ms: float | None
    qtc_ms: float | None
    qtc_fridericia_ms: float | None
    pr_ms: float | None
    n_beats: int
    ok: bool
    warnings: list[str]


@dataclass(frozen=True, slots=True)
class Delineation:
    """Result of :func:`delineate`: per-lead medians, global intervals, per-beat boundaries."""

    fs_hz: float
    leads: tuple[LeadMeasurements, ...]
    beats: BeatBoundaries
    hr_bpm: float | None
    rr_ms: float | None
    qrs_ms: float | None
    qt_ms: float | None
    qtc_ms: float | None
    qtc_fridericia_ms: float | None
    pr_ms: float | None
    ok: bool
    warnings: tuple[str, ...]

    def lead(self, name: str) -> LeadMeasurements:
        for m in self.leads:
            if m.lead == name:
                return m
        raise KeyError(name)

    def to_json(self) -> DelineationJson:
        return {
            "per_lead": {
                m.lead: {"st_mv": m.st_mv, "t_mv": m.t_mv, "qrs_ms": m.qrs_ms} for m in self.leads
            },
            "hr_bpm": self.hr_bpm,
            "rr_ms": self.rr_ms,
            "qrs_ms": self.qrs_ms,
            "qt_ms": self.qt_ms,
            "qtc_ms": self.qtc_ms,
            "qtc_fridericia_ms": self.qtc_fridericia_ms,
            "pr_ms": self.pr_ms,
            "n_beats": self.beats.n_beats,
            "ok": self.ok,
            "warnings": list(self.warnings),
        }


def _r3(x: float | None, nd: int = 3) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), nd)


def _median(values: FloatArray) -> float | None:
    v = values[np.isfinite(values)]
    return float(np.median(v)) if v.size else None


def _smooth(x: FloatArray, width: int) -> FloatArray:
    """Centred moving average along the last axis."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    if x.ndim == 1:
        return np.convolve(x, kernel, mode="same")
    return np.apply_along_axis(np.convolve, -1, x, kernel, "same")


def _filter(x: FloatArray, fs_hz: float, low_hz: float | None, high_hz: float) -> FloatArray:
    nyq = fs_hz / 2.0
    high = min(high_hz, 0.9 * nyq)
    if low_hz is None:
        sos = sps.butter(2, high / nyq, btype="lowpass", output="sos")
    else:
        sos = sps.butter(2, [low_hz / nyq, high / nyq], btype="bandpass", output="sos")
    padlen = min(x.shape[-1] - 1, int(fs_hz))
    out: FloatArray = sps.sosfiltfilt(sos, x, axis=-1, padlen=padlen)
    return out


def detect_r_peaks(signals_mv: npt.ArrayLike, fs_hz: float) -> IntArray:
    """R-peak sample indices from all leads of ``signals_mv`` (n_leads, n_samples)."""
    x = np.nan_to_num(np.atleast_2d(np.asarray(signals_mv, dtype=np.float64)))
    n = x.shape[-1]
    if n < int(2 * fs_hz):
        return np.zeros(0, dtype=np.int64)
    bp = _filter(x - np.median(x, axis=-1, keepdims=True), fs_hz, 5.0, 15.0)
    d = np.gradient(bp, axis=-1)
    scale = np.percentile(np.abs(d), 99.0, axis=-1, keepdims=True)
    usable = scale[:, 0] > 1e-9
    if not usable.any():
        return np.zeros(0, dtype=np.int64)
    energy = np.mean((d[usable] / scale[usable]) ** 2, axis=0)
    env = _smooth(energy, max(1, int(0.1 * fs_hz)))
    cand, props = sps.find_peaks(env, distance=max(1, int(MIN_RR_S * fs_hz)), height=0.0)
    if cand.size == 0:
        return np.zeros(0, dtype=np.int64)
    heights = props["peak_heights"]
    half = int(8.0 * fs_hz)
    lo = np.searchsorted(cand, cand - half)
    hi = np.searchsorted(cand, cand + half)
    ref = np.array([np.percentile(heights[a:b], 80.0) for a, b in zip(lo, hi, strict=True)])
    accepted = heights > 0.3 * ref
    # Search back: a gap much longer than the local RR holds a missed beat of lower energy.
    idx = np.flatnonzero(accepted)
    if idx.size >= 3:
        rr = np.diff(cand[idx])
        med_rr = float(np.median(rr))
        for k in np.flatnonzero(rr > 1.66 * med_rr):
            a, b = idx[k], idx[k + 1]
            inner = np.arange(a + 1, b)
            inner = inner[
                (cand[inner] - cand[a] > 0.36 * fs_hz) & (cand[b] - cand[inner] > 0.36 * fs_hz)
            ]
            inner = inner[heights[inner] > 0.15 * ref[inner]]
            if inner.size:
                accepted[inner[np.argmax(heights[inner])]] = True
    peaks = cand[accepted]
    # Refine to the largest band-passed deflection (R or S, whichever dominates) within ±60 ms.
    power = np.sum((bp[usable] / scale[usable]) ** 2, axis=0)
    w = int(0.06 * fs_hz)
    refined = np.array(
        [max(0, p - w) + int(np.argmax(power[max(0, p - w) : min(n, p + w + 1)])) for p in peaks],
        dtype=np.int64,
    )
    return np.unique(refined)


def _tangent_end(mag: FloatArray, peak: int, stop: int, floor: float) -> int:
    """T-wave end by the tangent method on a magnitude curve falling after ``peak``."""
    if stop - peak < 3:
        return stop
    slope = np.diff(mag[peak:stop])
    m = int(np.argmin(slope))
    if slope[m] >= 0:
        return stop
    pos = peak + m
    end = pos + (floor - mag[pos]) / slope[m]
    return int(np.clip(round(end), peak + 1, stop))


def _tangent_start(mag: FloatArray, start: int, peak: int, floor: float) -> int:
    """Wave onset by the tangent method on a magnitude curve rising towards ``peak``."""
    if peak - start < 3:
        return start
    slope = np.diff(mag[start:peak])
    m = int(np.argmax(slope))
    if slope[m] <= 0:
        return start
    pos = start + m
    onset = pos - (mag[pos] - floor) / slope[m]
    return int(np.clip(round(onset), start, peak - 1))


def _empty(fs_hz: float, lead_names: Sequence[str], warnings: list[str]) -> Delineation:
    z = np.zeros(0, dtype=np.int64)
    return Delineation(
        fs_hz=float(fs_hz),
        leads=tuple(LeadMeasurements(name, None, None, None) for name in lead_names),
        beats=BeatBoundaries(z, z, z, z, z, z, z, z),
        hr_bpm=None,
        rr_ms=None,
        qrs_ms=None,
        qt_ms=None,
        qtc_ms=None,
        qtc_fridericia_ms=None,
        pr_ms=None,
        ok=False,
        warnings=tuple(warnings),
    )


def delineate(signals_mv: npt.ArrayLike, fs_hz: float, lead_names: Sequence[str]) -> Delineation:
    """Delineate a resting ECG (n_leads, n_samples) in mV and measure it per lead.

    Raises :class:`EcgValidationError` when the shape and the lead names disagree or the
    sampling rate is too low; a flat or unreadable signal gives ``ok=False`` instead.
    """
    x = np.asarray(signals_mv, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(lead_names):
        raise EcgValidationError(
            f"signals shape {x.shape} does not match {len(lead_names)} lead names",
            field="signals_mv",
        )
    if not fs_hz >= 100.0:
        raise EcgValidationError(f"sampling rate {fs_hz} Hz is below 100 Hz", field="fs_hz")
    warnings: list[str] = []
    finite = np.isfinite(x)
    if not finite.all():
        warnings.append("non-finite samples replaced by 0")
        x = np.where(finite, x, 0.0)
    n = x.shape[1]
    ms = 1000.0 / fs_hz

    def s(seconds: float) -> int:
        return max(1, round(seconds * fs_hz))

    r = detect_r_peaks(x, fs_hz)
    # Drop beats too close to the edges to be measured.
    r = r[(r >= s(0.25)) & (r < n - s(0.45))]
    if r.size < 2:
        warnings.append(f"{r.size} measurable beats found; no measurements")
        return _empty(fs_hz, lead_names, warnings)

    lp = _filter(x, fs_hz, None, 40.0)
    vel = np.sqrt(np.sum(np.gradient(lp, axis=-1) ** 2, axis=0))
    vel = _smooth(vel, s(0.01))
    nb = r.size
    rr_all = np.diff(r).astype(np.float64)
    rr_beat = np.empty(nb)
    rr_beat[1:] = rr_all
    rr_beat[0] = rr_all[0]

    qrs_on = np.empty(nb, dtype=np.int64)
    qrs_off = np.empty(nb, dtype=np.int64)
    for i, ri in enumerate(r):
        a, b = max(0, ri - s(0.12)), min(n, ri + s(0.16))
        seg = vel[a:b]
        peak_i = a + int(np.argmax(seg))
        thr = _QRS_VELOCITY_FRACTION * float(seg.max())
        before = np.flatnonzero(vel[a:peak_i] < thr)
        after = np.flatnonzero(vel[peak_i:b] < thr)
        qrs_on[i] = a + int(before[-1]) if before.size else a
        # A notched QRS dips below the threshold inside the complex: the offset is the first
        # crossing after which the velocity stays low for 20 ms.
        off = b - 1
        for k in peak_i + after:
            if vel[k : k + s(0.02)].max() < thr:
                off = int(k)
                break
        qrs_off[i] = off

    # Isoelectric knots: mean of the PR segment, 30 ms ending 10 ms before QRS onset.
    knot_t = np.clip(qrs_on - s(0.025), 0, n - 1)
    knots = np.empty((x.shape[0], nb))
    for i in range(nb):
        a = max(0, qrs_on[i] - s(0.04))
        b = max(a + 1, qrs_on[i] - s(0.01))
        knots[:, i] = lp[:, a:b].mean(axis=1)
    t_axis = np.arange(n)
    baseline = np.vstack([np.interp(t_axis, knot_t, k) for k in knots])
    y = lp - baseline
    mag = np.sqrt(np.mean(y**2, axis=0))
    mag_s = _smooth(mag, s(0.02))

    n_leads = x.shape[0]
    st = np.full((n_leads, nb), np.nan)
    tamp = np.full((n_leads, nb), np.nan)
    lqrs = np.full((n_leads, nb), np.nan)
    t_on = np.full(nb, -1, dtype=np.int64)
    t_peak = np.full(nb, -1, dtype=np.int64)
    t_off = np.full(nb, -1, dtype=np.int64)
    p_on = np.full(nb, -1, dtype=np.int64)
    p_off = np.full(nb, -1, dtype=np.int64)
    # Noise: RMS over leads of what the 40 Hz low-pass removed (muscle, mains, quantisation).
    noise = float(np.median(np.sqrt(np.mean((x - lp) ** 2, axis=0)))) + 1e-4
    dlead = np.abs(np.gradient(lp, axis=-1))
    for i, ri in enumerate(r):
        rr_s = rr_beat[i] / fs_hz
        j = int(qrs_off[i])
        jst = j + s(ST_OFFSET_MS / 1000.0)
        a, b = max(0, jst - s(0.01)), min(n, jst + s(0.01) + 1)
        st[:, i] = y[:, a:b].mean(axis=1)
        # T window: J+80 ms to R + min(0.62 RR, 0.6 s), never past the next QRS onset.
        wa = j + s(0.08)
        wb = ri + s(min(0.62 * rr_s, 0.6))
        if i + 1 < nb:
            wb = min(wb, int(qrs_on[i + 1]) - s(0.04))
        wb = min(wb, n - 1)
        if wb - wa > s(0.06):
            tp = wa + int(np.argmax(mag_s[wa:wb]))
            floor = float(mag_s[tp:wb].min())
            t_peak[i] = tp
            t_off[i] = _tangent_end(mag_s, tp, wb, floor)
            st_floor = float(mag_s[j:tp].min()) if tp > j else floor
            # ST spans at least J to J+80 ms so that it holds the J+60 ms measurement point.
            t_on[i] = max(j + s(0.08), _tangent_start(mag_s, j, tp, st_floor))
            t_on[i] = min(t_on[i], tp)
            win = y[:, wa:wb]
            ext = np.argmax(np.abs(win), axis=1)
            tamp[:, i] = win[np.arange(n_leads), ext]
        # Per-lead QRS duration inside the global QRS ±20 ms.
        qa, qb = max(0, int(qrs_on[i]) - s(0.02)), min(n, j + s(0.02))
        dseg = dlead[:, qa:qb]
        above = dseg >= _LEAD_QRS_FRACTION * dseg.max(axis=1, keepdims=True)
        first = np.argmax(above, axis=1)
        last = above.shape[1] - 1 - np.argmax(above[:, ::-1], axis=1)
        lqrs[:, i] = (last - first + 1) * ms
        # P wave: magnitude peak between the previous T end (or 300 ms) and PR baseline.
        pa = max(0, int(qrs_on[i]) - s(0.3))
        if i > 0 and t_off[i - 1] > 0:
            pa = max(pa, int(t_off[i - 1]))
        pb = int(qrs_on[i]) - s(0.02)
        if pb - pa > s(0.06):
            pk = pa + int(np.argmax(mag_s[pa:pb]))
            height = float(mag_s[pk])
            floor_p = float(min(mag_s[pa : pk + 1].min(), mag_s[pk:pb].min()))
            if height - floor_p > max(0.02, 3.0 * noise) and pa < pk < pb - 1:
                p_on[i] = _tangent_start(mag_s, pa, pk, floor_p)
                p_off[i] = _tangent_end(mag_s, pk, pb, floor_p)

    if np.ptp(x) < 0.05 or float(np.median(vel[r])) < 1e-4:
        warnings.append("flat signal")
    rr_ms = _median(rr_all * ms)
    hr = 60000.0 / rr_ms if rr_ms else None
    if hr is not None and not 20.0 <= hr <= 250.0:
        warnings.append(f"implausible heart rate {hr:.0f} bpm")
    has_t = t_off >= 0
    qt = _median(((t_off - qrs_on) * ms)[has_t].astype(np.float64))
    qtc = qtc_f = None
    if qt is not None and rr_ms:
        qtc = qt / math.sqrt(rr_ms / 1000.0)
        qtc_f = qt / (rr_ms / 1000.0) ** (1.0 / 3.0)
    # P waves count only when most beats have one at a steady PR interval; otherwise (atrial
    # fibrillation, flutter, noise) the candidates are dropped.
    has_p = p_on >= 0
    pr_beats = ((qrs_on - p_on) * ms)[has_p].astype(np.float64)
    pr = None
    if has_p.sum() > nb // 2 and float(np.subtract(*np.percentile(pr_beats, [75, 25]))) <= 40.0:
        pr = _median(pr_beats)
    else:
        p_on[:] = -1
        p_off[:] = -1
    leads = tuple(
        LeadMeasurements(
            lead=name,
            st_mv=_r3(_median(st[k])),
            t_mv=_r3(_median(tamp[k])),
            qrs_ms=_r3(_median(lqrs[k]), 1),
        )
        for k, name in enumerate(lead_names)
    )
    beats = BeatBoundaries(
        r=r.astype(np.int64),
        p_on=p_on,
        p_off=p_off,
        qrs_on=qrs_on,
        qrs_off=qrs_off,
        t_on=t_on,
        t_peak=t_peak,
        t_off=t_off,
    )
    return Delineation(
        fs_hz=float(fs_hz),
        leads=leads,
        beats=beats,
        hr_bpm=_r3(hr, 1),
        rr_ms=_r3(rr_ms, 1),
        qrs_ms=_r3(_median(((qrs_off - qrs_on) * ms).astype(np.float64)), 1),
        qt_ms=_r3(qt, 1),
        qtc_ms=_r3(qtc, 1),
        qtc_fridericia_ms=_r3(qtc_f, 1),
        pr_ms=_r3(pr, 1),
        ok=not warnings,
        warnings=tuple(warnings),
    )
