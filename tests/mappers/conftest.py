"""Fixtures for mapper tests: real PTB-XL records from tests/fixtures/ptbxl_sample."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from inference.record import LEADS_12, Demographics, EcgRecord, PatientRef, Sex

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PTBXL_SAMPLE = FIXTURES / "ptbxl_sample" / "signals_500hz_uv.npz"
WFDB_DIR = FIXTURES / "wfdb"
NOW = datetime(2024, 3, 5, 14, 30, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def ptbxl_signals_uv() -> np.ndarray:
    with np.load(PTBXL_SAMPLE) as data:
        assert [str(x) for x in data["leads"]] == list(LEADS_12)
        return np.asarray(data["signals"])


@pytest.fixture
def record(ptbxl_signals_uv: np.ndarray) -> EcgRecord:
    """A real PTB-XL record (integer microvolts, 500 Hz, 10 s) with patient and demographics."""
    return EcgRecord(
        signals_mv=(ptbxl_signals_uv[3].astype(np.float64) / 1000.0).astype(np.float32),
        lead_names=LEADS_12,
        fs_hz=500.0,
        record_id="ptbxl-9879",
        acquired_at=datetime(2024, 3, 5, 14, 12, 7, tzinfo=UTC),
        patient=PatientRef(system="urn:oid:1.2.276.0.1", value="MRN-0042"),
        demographics=Demographics(age_years=67.0, sex=Sex.FEMALE),
    )


def small_record(n_samples: int = 100, fs_hz: float = 100.0) -> EcgRecord:
    """A tiny synthetic record (1 s at 100 Hz) for fuzzing and error cases."""
    t = np.arange(n_samples, dtype=np.float64) / fs_hz
    rows = [np.round(np.sin(2 * np.pi * (i + 1) * t) * 1000.0) / 1000.0 for i in range(12)]
    return EcgRecord(
        signals_mv=np.stack(rows).astype(np.float32),
        lead_names=LEADS_12,
        fs_hz=fs_hz,
        record_id="small-1",
        acquired_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        patient=PatientRef(system="HOSP", value="P1"),
        demographics=Demographics(age_years=50.0, sex=Sex.MALE),
    )
