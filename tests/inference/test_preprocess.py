"""Resampling, band-pass, crop/pad and lead mapping."""

from __future__ import annotations

import numpy as np
import pytest

from inference.errors import EcgValidationError
from inference.preprocess import PreprocessConf, preprocess, preprocess_batch, to_model_leads
from inference.record import LEADS_12, EcgRecord


def _sine(fs_hz: float, seconds: float, freq_hz: float = 5.0) -> np.ndarray:
    t = np.arange(round(fs_hz * seconds)) / fs_hz
    return np.tile(np.sin(2 * np.pi * freq_hz * t), (12, 1)).astype(np.float32)


@pytest.mark.parametrize("fs_hz", [100.0, 250.0, 360.0, 500.0, 1000.0, 257.0])
def test_resample_rates_keep_a_5hz_sine(fs_hz: float) -> None:
    out = preprocess(_sine(fs_hz, 10.0), fs_hz)
    assert out.shape == (12, 1000)
    assert out.dtype == np.float32
    middle = out[0, 200:800]
    assert middle.max() == pytest.approx(1.0, abs=0.03)
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.argmax(spectrum) * 100 / middle.size == pytest.approx(5.0, abs=0.2)


def test_short_record_is_zero_padded_in_the_centre() -> None:
    out = preprocess(_sine(500.0, 4.0), 500.0)
    assert out.shape == (12, 1000)
    assert np.all(out[:, :295] == 0) and np.all(out[:, -295:] == 0)
    assert np.abs(out[:, 400:600]).max() > 0.5


def test_long_record_is_cropped_to_its_centre() -> None:
    sig = _sine(500.0, 20.0)
    sig[:, : 500 * 5] = 0  # first 5 s silent: the centre crop (5-15 s) never sees it
    out = preprocess(sig, 500.0)
    assert out.shape == (12, 1000)
    assert np.abs(out[:, 20:980]).min(axis=1).max() < 1.0  # a sine, not silence
    assert np.abs(out[:, 100:200]).max() > 0.5


def test_band_pass_removes_baseline_offset() -> None:
    sig = _sine(500.0, 10.0) + np.float32(3.0)
    out = preprocess(sig, 500.0)
    assert abs(float(out[:, 100:900].mean())) < 0.05


def test_batch_equals_single() -> None:
    rng = np.random.default_rng(0)
    batch = rng.normal(0, 0.3, (5, 12, 5000)).astype(np.float32)
    single = np.stack([preprocess(b, 500.0) for b in batch])
    np.testing.assert_allclose(preprocess(batch, 500.0), single, atol=1e-6)
    np.testing.assert_allclose(preprocess_batch(batch, 500.0, chunk=2), single, atol=1e-6)


def test_conf_round_trip() -> None:
    conf = PreprocessConf(high_hz=35.0)
    assert PreprocessConf.from_json(conf.to_json()) == conf
    assert conf.n_samples == 1000


def test_lead_order_and_case_are_normalised(sample_records: list[EcgRecord]) -> None:
    rec = sample_records[0]
    order = list(reversed(range(12)))
    shuffled = EcgRecord(
        signals_mv=np.ascontiguousarray(rec.signals_mv[order]),
        lead_names=tuple(LEADS_12[i].upper() for i in order),
        fs_hz=rec.fs_hz,
        record_id="shuffled",
    )
    np.testing.assert_array_equal(to_model_leads(shuffled), rec.signals_mv)


def test_limb_leads_derived_from_i_and_ii(sample_records: list[EcgRecord]) -> None:
    rec = sample_records[5]
    keep = [0, 1, *range(6, 12)]
    eight = EcgRecord(
        signals_mv=np.ascontiguousarray(rec.signals_mv[keep]),
        lead_names=tuple(LEADS_12[i] for i in keep),
        fs_hz=rec.fs_hz,
        record_id="eight-leads",
    )
    derived = to_model_leads(eight)
    assert derived.shape == (12, rec.n_samples)
    # PTB-XL stores all 12 leads; the derived ones match to within quantisation (a few uV).
    np.testing.assert_allclose(derived, rec.signals_mv, atol=0.005)


def test_missing_precordial_lead_is_an_error(sample_records: list[EcgRecord]) -> None:
    rec = sample_records[0]
    keep = [i for i in range(12) if LEADS_12[i] != "V3"]
    rec11 = EcgRecord(
        signals_mv=np.ascontiguousarray(rec.signals_mv[keep]),
        lead_names=tuple(LEADS_12[i] for i in keep),
        fs_hz=rec.fs_hz,
        record_id="no-v3",
    )
    with pytest.raises(EcgValidationError, match="V3") as info:
        to_model_leads(rec11)
    assert info.value.field == "lead_names"


def test_missing_lead_ii_cannot_derive(sample_records: list[EcgRecord]) -> None:
    rec = sample_records[0]
    keep = [0, *range(6, 12)]
    rec7 = EcgRecord(
        signals_mv=np.ascontiguousarray(rec.signals_mv[keep]),
        lead_names=tuple(LEADS_12[i] for i in keep),
        fs_hz=rec.fs_hz,
        record_id="no-ii",
    )
    with pytest.raises(EcgValidationError) as info:
        to_model_leads(rec7)
    assert info.value.field == "lead_names"
