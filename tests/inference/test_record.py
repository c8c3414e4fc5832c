"""Domain invariants of EcgRecord (shape, dtype, finite values, units, lead names)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.errors import EcgValidationError
from inference.record import LEADS_12, Demographics, EcgRecord


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
