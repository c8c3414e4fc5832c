"""Property round trips: record -> HL7 NA / MA, FHIR R4 / R5, WFDB, aECG, DICOM -> record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import wfdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from inference.record import LEADS_12, EcgRecord
from mappers.aecg_in import record_from_aecg
from mappers.aecg_out import build_aecg
from mappers.dicom_ecg import build_dicom_ecg, record_from_dicom
from mappers.fhir_r4 import observation_to_record, record_to_observation
from mappers.hl7v2 import build_oru_r01, parse_oru_r01
from mappers.wfdb_in import record_from_wfdb
from tests.mappers.conftest import NOW
from tests.mappers.hl7_builders import build_ma

# integer microvolts within the 16-bit range: every format carries them exactly
signals_uv = arrays(
    np.int16, st.tuples(st.just(12), st.integers(100, 300)), elements=st.integers(-32767, 32767)
)
rates = st.sampled_from([100.0, 250.0, 360.0, 500.0, 1000.0])
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _record(uv: np.ndarray, fs: float) -> EcgRecord:
    n = max(uv.shape[1], int(fs))
    sig = np.resize(uv, (12, n)).astype(np.float64) / 1000.0
    return EcgRecord(sig.astype(np.float32), LEADS_12, fs, "prop-1", acquired_at=NOW)


@FAST
@given(signals_uv, rates)
def test_hl7_na_and_ma(uv: np.ndarray, fs: float) -> None:
    rec = _record(uv, fs)
    _, na = parse_oru_r01(build_oru_r01(rec, control_id="P1", now=NOW))
    _, ma = parse_oru_r01(build_ma(rec, control_id="P2", now=NOW))
    assert np.array_equal(na.signals_mv, rec.signals_mv) and na.fs_hz == fs
    assert np.array_equal(ma.signals_mv, rec.signals_mv) and ma.fs_hz == fs


@FAST
@given(signals_uv, rates)
def test_fhir_r4_and_r5(uv: np.ndarray, fs: float) -> None:
    rec = _record(uv, fs)
    obs = record_to_observation(rec)
    assert np.array_equal(observation_to_record(obs).signals_mv, rec.signals_mv)
    for comp in obs["component"]:  # R5: interval + intervalUnit instead of period
        sd = comp["valueSampledData"]
        sd["interval"], sd["intervalUnit"] = sd.pop("period"), "ms"
    back = observation_to_record(json.dumps(obs))
    assert np.array_equal(back.signals_mv, rec.signals_mv) and back.fs_hz == fs


@FAST
@given(signals_uv, rates)
def test_aecg_and_dicom(uv: np.ndarray, fs: float) -> None:
    rec = _record(uv, fs)
    assert np.array_equal(record_from_aecg(build_aecg(rec)).signals_mv, rec.signals_mv)
    assert np.array_equal(record_from_dicom(build_dicom_ecg(rec)).signals_mv, rec.signals_mv)


@settings(max_examples=8, deadline=None)
@given(signals_uv, rates)
def test_wfdb(tmp_path_factory: object, uv: np.ndarray, fs: float) -> None:
    rec = _record(uv, fs)
    out = Path(tmp_path_factory.mktemp("wfdb"))  # type: ignore[attr-defined]
    wfdb.wrsamp(
        "r",
        fs=fs,
        units=["mV"] * 12,
        sig_name=list(LEADS_12),
        d_signal=np.rint(rec.signals_mv.T.astype(np.float64) * 1000).astype(np.int16),
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(out),
    )
    back = record_from_wfdb(wfdb.rdrecord(str(out / "r")))
    assert np.abs(back.signals_mv - rec.signals_mv).max() <= 1e-6
