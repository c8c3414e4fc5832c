"""Domain invariants of EcgRecord (shape, dtype, finite values, units, lead names)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.errors import EcgValidationError
from inference.fairness import band_of
from inference.record import AGE_BANDS, LEADS_12, Demographics, EcgRecord


def _signals(n_leads: int = 12, n: int = 5000) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / 500
    return np.tile(np.sin(2 * np.pi * 1.2 * t), (n_leads, 1)).astype(np.float32)


def _record(**overrides: object) -> EcgRecord:
    kwargs: dict[str, object] = {
        "signals_mv": _signals(),
        "lead_names": LEADS_12,
        "fs_hz": 500.0,
        "record_id": "r1",
    }
    kwargs.update(overrides)
    return EcgRecord(**kwargs)  # type: ignore[arg-type]


def test_valid_record_is_read_only() -> None:
    rec = _record()
    assert rec.n_samples == 5000
    assert rec.duration_s == pytest.approx(10.0)
    assert not rec.signals_mv.flags.writeable
    assert rec.lead("V2").shape == (5000,)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"signals_mv": _signals()[0]}, "signals_mv"),
        ({"signals_mv": _signals().astype(np.float64)}, "signals_mv"),
        ({"signals_mv": _signals(n_leads=11)}, "lead_names"),
        ({"lead_names": ("I",) * 12}, "lead_names"),
        ({"fs_hz": 10.0}, "fs_hz"),
        ({"signals_mv": _signals(n=200)}, "signals_mv"),
        ({"record_id": ""}, "record_id"),
    ],
)
def test_invalid_records_are_rejected(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(EcgValidationError) as info:
        _record(**overrides)
    assert info.value.field == field


def test_nan_rejected() -> None:
    sig = _signals()
    sig[3, 100] = np.nan
    with pytest.raises(EcgValidationError, match="NaN"):
        _record(signals_mv=sig)


def test_microvolts_taken_for_millivolts_rejected() -> None:
    with pytest.raises(EcgValidationError, match="units"):
        _record(signals_mv=_signals() * np.float32(1000.0))


def test_age_band_and_bounds() -> None:
    assert Demographics(age_years=39.9).age_band == "<40"
    assert Demographics(age_years=65).age_band == "40-65"
    assert Demographics(age_years=65.5).age_band == ">65"
    with pytest.raises(EcgValidationError):
        Demographics(age_years=300)


def test_the_scalar_and_array_age_bands_agree_at_the_edges() -> None:
    """One definition (`AGE_BANDS` and its edges) serves a record and a cohort alike."""
    ages = [0.0, 39.999, 40.0, 52.5, 65.0, 65.001, 89.0, 130.0]
    cohort = band_of(np.array(ages)).tolist()
    assert cohort == [Demographics(age_years=a).age_band for a in ages]
    assert cohort == ["<40", "<40", "40-65", "40-65", "40-65", ">65", ">65", ">65"]
    assert set(cohort) == set(AGE_BANDS)
    assert Demographics().age_band is None and band_of(np.array([np.nan])).tolist() == [""]
