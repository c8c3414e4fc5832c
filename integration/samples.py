"""Real PTB-XL sample records (the project's fixtures) as ECG records, for the demo and the
end-to-end tests. Attribution: tests/fixtures/ptbxl_sample/ATTRIBUTION.md."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from inference.dataset import load_ptbxl
from inference.labels import TASKS
from inference.record import LEADS_12, Demographics, EcgRecord, PatientRef, Sex

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ptbxl_sample"


@dataclass(frozen=True, slots=True)
class Sample:
    record: EcgRecord
    ecg_id: int
    #: The cardiologists' statement as the demo shows it, e.g. "MI: anterior" or "no MI".
    label: str


def cardiologist_label(labels: dict[str, bool]) -> str:
    if not labels.get("mi"):
        return "no MI"
    where = [t for t in TASKS if t != "mi" and labels.get(t)]
    return "MI: " + ("/".join(where) if where else "other")


def load_samples(data_dir: Path = SAMPLE_DIR) -> list[Sample]:
    data = load_ptbxl(data_dir, folds=None)
    out: list[Sample] = []
    for i, ecg_id in enumerate(data.ecg_id):
        age = float(data.age_years[i])
        sex = {0: Sex.MALE, 1: Sex.FEMALE}.get(int(data.sex[i]), Sex.UNKNOWN)
        record = EcgRecord(
            signals_mv=np.ascontiguousarray(data.signals_mv[i], dtype=np.float32),
            lead_names=LEADS_12,
            fs_hz=float(data.fs_hz),
            record_id=f"ptbxl-{int(ecg_id)}",
            acquired_at=datetime(2026, 11, 1, 8, 0, tzinfo=UTC),
            patient=PatientRef(
                reference=f"Patient/ptbxl-patient-{int(ecg_id)}",
                system="urn:ecgbridge:demo:mrn",
                value=f"PTBXL{int(ecg_id)}",
            ),
            # PTB-XL writes 300 for "over 89"; NaN means unknown.
            demographics=Demographics(age_years=None if np.isnan(age) else min(age, 90.0), sex=sex),
            identifiers=(("ptbxl_ecg_id", str(int(ecg_id))),),
        )
        labels = {t: bool(data.labels[i, j]) for j, t in enumerate(TASKS)}
        out.append(Sample(record, int(ecg_id), cardiologist_label(labels)))
    return out
