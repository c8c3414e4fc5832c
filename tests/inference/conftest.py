"""Shared fixtures: the eight PTB-XL records under tests/fixtures/ptbxl_sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.analyzer import Analyzer
from inference.dataset import PtbxlData, load_ptbxl
from inference.record import LEADS_12, Demographics, EcgRecord, Sex

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "ptbxl_sample"


@pytest.fixture(scope="session")
def sample_data() -> PtbxlData:
    return load_ptbxl(FIXTURE_DIR, None)


@pytest.fixture(scope="session")
def sample_records(sample_data: PtbxlData) -> list[EcgRecord]:
    return [
        EcgRecord(
            signals_mv=sample_data.signals_mv[i],
            lead_names=LEADS_12,
            fs_hz=sample_data.fs_hz,
            record_id=f"ptbxl-{int(sample_data.ecg_id[i])}",
            demographics=Demographics(
                age_years=min(float(sample_data.age_years[i]), 90.0),
                sex=Sex.MALE if sample_data.sex[i] == 0 else Sex.FEMALE,
            ),
        )
        for i in range(len(sample_data))
    ]


@pytest.fixture(scope="session")
def analyzer() -> Analyzer:
    return Analyzer.load(device="cpu")
