"""Delineation and measurements on real records (MIT-BIH 100, PTB-XL) and a synthetic ECG."""

from __future__ import annotations

import ast
import json
import math
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import wfdb

from inference.delineation import Segment, delineate, detect_r_peaks
from inference.record import LEADS_12

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FS = 500.0
#: MIT-BIH beat annotation symbols (non-beat annotations such as rhythm changes excluded).
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")

Signals = npt.NDArray[np.float32]


def _load(name: str) -> tuple[Signals, pd.DataFrame]:
    z = np.load(FIXTURES / name / "signals_500hz_uv.npz")
    records = pd.read_csv(FIXTURES / name / "records.csv")
    assert list(z["ecg_id"]) == list(records["ecg_id"])
    return (z["signals"].astype(np.float32) / 1000.0), records


def _codes(records: pd.DataFrame) -> list[dict[str, float]]:
    return [ast.literal_eval(s) for s in records["scp_codes"]]


def test_r_peaks_match_mitbih_100_annotations() -> None:
    record = wfdb.rdrecord(str(FIXTURES / "wfdb" / "100"))
    ann = wfdb.rdann(str(FIXTURES / "wfdb" / "100"), "atr")
    ref = np.array(
        [s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS]
    )
    found = detect_r_peaks(record.p_signal.T, float(record.fs))
    tol = 0.05 * record.fs
    nearest = np.clip(np.searchsorted(found, ref), 1, len(found) - 1)
    dist = np.minimum(np.abs(found[nearest] - ref), np.abs(found[nearest - 1] - ref))
    true_pos = int(np.sum(dist <= tol))
    # Each detection may match one reference beat at most: count detections near a beat too.
    near_ref = np.clip(np.searchsorted(ref, found), 1, len(ref) - 1)
    dist_d = np.minimum(np.abs(ref[near_ref] - found), np.abs(ref[near_ref - 1] - found))
    sensitivity = true_pos / len(ref)
    ppv = int(np.sum(dist_d <= tol)) / len(found)
    assert len(ref) == 2273
    assert sensitivity > 0.99
    assert ppv > 0.99
    assert len(found) == pytest.approx(len(ref), abs=5)


def test_heart_rate_matches_rr_intervals() -> None:
    signals, records = _load("ptbxl_sample")
    for i in range(len(records)):
        result = delineate(signals[i], FS, LEADS_12)
        r = result.beats.r
        expected = 60.0 / (float(np.median(np.diff(r))) / FS)
        assert result.ok, result.warnings
        assert result.hr_bpm == pytest.approx(expected, abs=0.1)
        # Every PTB-XL sample record is 10 s long: the beat count bounds the mean rate.
        assert result.hr_bpm is not None
        assert abs(len(r) - result.hr_bpm / 6.0) <= 3.0
        assert result.qtc_ms is not None
        assert 340.0 < result.qtc_ms < 480.0
        assert result.qtc_fridericia_ms is not None


def test_rhythm_labels_agree_with_rate() -> None:
    signals, records = _load("ptbxl_sample")
    for i, codes in enumerate(_codes(records)):
        hr = delineate(signals[i], FS, LEADS_12).hr_bpm
        assert hr is not None
        if "SBRAD" in codes:
            assert hr < 60.0
        if "STACH" in codes:
            assert hr > 100.0


def test_st_elevation_and_depression_separate_from_norm() -> None:
    norm_signals, norm_records = _load("ptbxl_sample")
    st_signals, st_records = _load("ptbxl_st")
    norm = [i for i, c in enumerate(_codes(norm_records)) if c.get("NORM", 0.0) >= 100.0]
    assert len(norm) == 4

    def st_levels(x: Signals) -> npt.NDArray[np.float64]:
        result = delineate(x, FS, LEADS_12)
        return np.array([m.st_mv for m in result.leads], dtype=np.float64)

    norm_st = [st_levels(norm_signals[i]) for i in norm]
    codes = _codes(st_records)
    ste = [st_levels(st_signals[i]) for i, c in enumerate(codes) if "STE_" in c]
    std = [st_levels(st_signals[i]) for i, c in enumerate(codes) if "STD_" in c]
    assert len(ste) == 5
    assert len(std) == 3
    # NORM: every lead within ±0.2 mV (V2-V3 J+60 up to 0.2 mV is normal in young men).
    assert all(np.all(np.abs(s) <= 0.2) for s in norm_st)
    # STE_: the largest ST elevation is higher than in the NORM records, on median.
    assert np.median([s.max() for s in ste]) > np.median([s.max() for s in norm_st]) + 0.03
    # STD_: the deepest depression outside aVR (whose ST mirrors the other leads and is
    # normally negative) is deeper than in every NORM record.
    not_avr = np.array([lead != "aVR" for lead in LEADS_12])
    deepest_std = max(s[not_avr].min() for s in std)
    assert deepest_std < min(s[not_avr].min() for s in norm_st) - 0.02


def _synthetic_ecg(st_shift_mv: float, *, hr_bpm: float = 60.0) -> tuple[Signals, list[int]]:
    """Twelve identical leads of Gaussian P, Q, R, S, T waves with a plateau ST shift."""
    n = int(10 * FS)
    t = np.arange(n) / FS
    x = np.zeros(n)
    rr = 60.0 / hr_bpm
    r_times = np.arange(0.5, 9.6, rr)

    def g(center: float, amp: float, sd_ms: float) -> npt.NDArray[np.float64]:
        return amp * np.exp(-0.5 * ((t - center) / (sd_ms / 1000.0)) ** 2)

    for rt in r_times:
        x += g(rt - 0.17, 0.15, 20.0) + g(rt - 0.025, -0.1, 8.0) + g(rt, 1.2, 10.0)
        x += g(rt + 0.03, -0.25, 8.0) + g(rt + 0.3, 0.35, 40.0)
        # ST shift: a smooth plateau from the J point (~R+60 ms) into the T wave.
        ramp = np.clip((t - (rt + 0.05)) / 0.02, 0.0, 1.0) * np.clip((rt + 0.36 - t) / 0.08, 0, 1)
        x += st_shift_mv * ramp
    signals = np.tile(x.astype(np.float32), (12, 1))
    return signals, [int(rt * FS) for rt in r_times]


def test_synthetic_st_shift_is_measured_within_0_03_mv() -> None:
    flat_st, r_true = _synthetic_ecg(0.0)
    raised, _ = _synthetic_ecg(0.2)
    base = delineate(flat_st, FS, LEADS_12)
    shifted = delineate(raised, FS, LEADS_12)
    assert base.ok
    assert shifted.ok
    assert np.all(np.abs(base.beats.r - np.array(r_true)[: base.beats.n_beats]) <= 5)
    assert base.hr_bpm == pytest.approx(60.0, abs=0.5)
    for lead in LEADS_12:
        st0, st1 = base.lead(lead).st_mv, shifted.lead(lead).st_mv
        assert st0 is not None
        assert st1 is not None
        assert abs(st0) <= 0.03
        assert st1 == pytest.approx(0.2, abs=0.03)
        assert shifted.lead(lead).t_mv == pytest.approx(0.35 + 0.2, abs=0.06)


def test_segments_are_ordered_and_cover_the_beat() -> None:
    signals, _ = _load("ptbxl_sample")
    result = delineate(signals[0], FS, LEADS_12)
    b = result.beats
    has_t = b.t_off >= 0
    assert has_t.mean() > 0.8
    assert np.all(b.qrs_on[has_t] < b.r[has_t])
    assert np.all(b.r[has_t] < b.qrs_off[has_t])
    assert np.all(b.qrs_off[has_t] < b.t_on[has_t])
    assert np.all(b.t_on[has_t] <= b.t_peak[has_t])
    assert np.all(b.t_peak[has_t] < b.t_off[has_t])
    has_p = b.p_on >= 0
    assert np.all(b.p_off[has_p] <= b.qrs_on[has_p])
    mask = b.mask(Segment.ST, signals.shape[-1])
    assert mask.sum() == sum(e - s for s, e in b.spans(Segment.ST))
    assert result.pr_ms is not None
    assert 100.0 < result.pr_ms < 220.0


def test_to_json_shape() -> None:
    signals, _ = _load("ptbxl_sample")
    doc = delineate(signals[0], FS, LEADS_12).to_json()
    text = json.dumps(doc, allow_nan=False)
    assert set(doc["per_lead"]) == set(LEADS_12)
    assert set(doc["per_lead"]["V2"]) == {"st_mv", "t_mv", "qrs_ms"}
    assert isinstance(doc["hr_bpm"], float)
    assert isinstance(doc["qtc_ms"], float)
    assert "NaN" not in text


@pytest.mark.parametrize("kind", ["flat", "noise", "nan", "short"])
def test_unusable_input_gives_no_exception_and_no_nan(kind: str) -> None:
    rng = np.random.default_rng(7)
    n = int(10 * FS)
    if kind == "flat":
        x = np.zeros((12, n), dtype=np.float32)
    elif kind == "noise":
        x = rng.normal(0.0, 0.5, (12, n)).astype(np.float32)
    elif kind == "nan":
        x = np.full((12, n), np.nan, dtype=np.float32)
    else:
        x = np.zeros((12, int(0.5 * FS)), dtype=np.float32)
    result = delineate(x, FS, LEADS_12)
    doc = result.to_json()
    json.dumps(doc, allow_nan=False)
    for m in result.leads:
        for v in (m.st_mv, m.t_mv, m.qrs_ms):
            assert v is None or math.isfinite(v)
    if kind != "noise":
        assert not result.ok
        assert result.warnings


def test_speed_under_150_ms_per_ecg() -> None:
    signals, _ = _load("ptbxl_sample")
    delineate(signals[0], FS, LEADS_12)
    times = []
    for x in signals:
        t0 = time.perf_counter()
        delineate(x, FS, LEADS_12)
        times.append(time.perf_counter() - t0)
    assert float(np.median(times)) < 0.150
