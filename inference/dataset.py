"""Read a PTB-XL subset in the project's layout (../shared/data/README.md).

A data directory holds ``signals_500hz_uv.npz`` (``signals`` int16 microvolts (N, 12, n),
``ecg_id``, ``leads``, ``fs_hz``) and ``records.csv`` (PTB-XL columns, same row order as
``ecg_id``). Any directory in that layout works, including a withheld evaluation fold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from inference.errors import EcgBridgeError
from inference.labels import TASKS, labels_from_scp
from inference.record import LEADS_12

logger = logging.getLogger(__name__)

SIGNALS_FILE = "signals_500hz_uv.npz"
RECORDS_FILE = "records.csv"
#: PTB-XL codes ages over 89 as 300.
AGE_OVER_89 = 300.0


class DatasetError(EcgBridgeError, ValueError):
    """A data directory does not follow the documented layout (CLI exit code 2)."""


@dataclass(frozen=True)
class PtbxlData:
    """Records of one PTB-XL data directory, in file order, restricted to the asked folds.

    `signals_mv` is float32 millivolts (N, 12, n_samples) in `LEADS_12` order; `labels` is
    (N, len(tasks)); `age_years` is NaN where unknown (300 = over 89 is kept as 300);
    `sex` is 0 male, 1 female, -1 unknown.
    """

    signals_mv: npt.NDArray[np.float32]
    fs_hz: float
    labels: npt.NDArray[np.float32]
    tasks: tuple[str, ...]
    age_years: npt.NDArray[np.float64]
    sex: npt.NDArray[np.int64]
    site: npt.NDArray[np.float64]
    device: tuple[str, ...]
    strat_fold: npt.NDArray[np.int64]
    ecg_id: npt.NDArray[np.int64]
    #: PTB-XL patient ids (for patient-grouped splits inside a fold); -1 where absent.
    patient_id: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.ecg_id.shape[0])


def load_ptbxl(
    data_dir: Path,
    folds: Sequence[int] | None = None,
    tasks: Sequence[str] = TASKS,
) -> PtbxlData:
    """Load the records of `data_dir`, keeping only `folds` (all records when None), with
    one label column per task of `tasks` (see `inference.labels.TASK_CODES`)."""
    sig_path = Path(data_dir) / SIGNALS_FILE
    csv_path = Path(data_dir) / RECORDS_FILE
    if not sig_path.is_file() or not csv_path.is_file():
        raise DatasetError(f"{data_dir} must contain {SIGNALS_FILE} and {RECORDS_FILE}")
    records = pd.read_csv(csv_path)
    with np.load(sig_path, allow_pickle=False) as npz:
        ecg_id = np.asarray(npz["ecg_id"]).astype(np.int64)
        leads = tuple(str(x) for x in np.asarray(npz["leads"]).tolist())
        fs_hz = float(np.asarray(npz["fs_hz"]))
        if folds is None:
            keep = np.ones(len(records), dtype=bool)
        else:
            keep = records["strat_fold"].isin(list(folds)).to_numpy()
        raw = np.asarray(npz["signals"])
    if raw.shape[0] != len(records) or not np.array_equal(
        ecg_id, records["ecg_id"].to_numpy(dtype=np.int64)
    ):
        raise DatasetError(f"{RECORDS_FILE} rows do not match the ecg_id order of {SIGNALS_FILE}")
    if leads != LEADS_12:
        order = [leads.index(name) for name in LEADS_12]
        raw = raw[:, order, :]
    signals = raw[keep].astype(np.float32) / np.float32(1000.0)
    rows = records.loc[keep].reset_index(drop=True)
    sex = rows["sex"].fillna(-1).to_numpy(dtype=np.int64)
    data = PtbxlData(
        signals_mv=signals,
        fs_hz=fs_hz,
        labels=labels_from_scp(rows["scp_codes"].astype(str), tasks),
        tasks=tuple(tasks),
        age_years=rows["age"].to_numpy(dtype=np.float64),
        sex=sex,
        site=rows["site"].to_numpy(dtype=np.float64),
        device=tuple(str(d).strip() for d in rows["device"]),
        strat_fold=rows["strat_fold"].to_numpy(dtype=np.int64),
        ecg_id=ecg_id[keep],
        patient_id=(
            rows["patient_id"].fillna(-1).to_numpy(dtype=np.int64)
            if "patient_id" in rows
            else np.full(len(rows), -1, dtype=np.int64)
        ),
    )
    logger.info(
        "loaded %d records from %s (folds %s), positives %s",
        len(data),
        data_dir,
        "all" if folds is None else list(folds),
        dict(zip(data.tasks, data.labels.sum(axis=0).astype(int).tolist(), strict=True)),
    )
    return data
