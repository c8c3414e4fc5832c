"""WFDB records -> EcgRecord: golden tests against wfdb.rdsamp on real PhysioNet records."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from inference.record import LEADS_12, Demographics, Sex
from mappers.errors import LeadError, WaveformError
from mappers.wfdb_in import HeaderInfo, parse_header_comments, record_from_wfdb
from tests.mappers.conftest import WFDB_DIR


@pytest.mark.parametrize(
    ("name", "age", "sex", "dx"),
    [
        ("HR06000", 59.0, Sex.FEMALE, ("164934002", "426783006")),
        ("HR06003", 46.0, Sex.FEMALE, ("426783006", "427084000")),
    ],
)
def test_cinc_ptbxl_records_match_rdsamp(
    name: str, age: float, sex: Sex, dx: tuple[str, ...]
) -> None:
    path = str(WFDB_DIR / name)
    signal, fields = wfdb.rdsamp(path)
    rec = record_from_wfdb(wfdb.rdrecord(path))
    assert rec.record_id == name
    assert rec.lead_names == LEADS_12
    assert rec.fs_hz == fields["fs"] == 500
    assert rec.n_samples == 5000
    expected = np.stack([signal[:, fields["sig_name"].index(lead)] for lead in LEADS_12])
    assert np.array_equal(rec.signals_mv, expected.astype(np.float32))
    assert rec.demographics == Demographics(age_years=age, sex=sex)
    assert parse_header_comments(fields["comments"]).dx_snomed == dx
    assert rec.identifier("wfdb") == name


def test_ptb_diagnostic_record_keeps_the_12_standard_leads() -> None:
    path = str(WFDB_DIR / "s0010_re")
    signal, fields = wfdb.rdsamp(path)
    assert fields["sig_name"][-3:] == ["vx", "vy", "vz"]
    rec = record_from_wfdb(wfdb.rdrecord(path), record_id="ptbdb/patient001/s0010_re")
    assert rec.record_id == "ptbdb/patient001/s0010_re"
    assert rec.fs_hz == 1000
    assert rec.signals_mv.shape == (12, 38400)
    lower = [n.lower() for n in LEADS_12]
    expected = np.stack([signal[:, fields["sig_name"].index(lead)] for lead in lower])
    assert np.array_equal(rec.signals_mv, expected.astype(np.float32))
    assert rec.demographics == Demographics(age_years=81.0, sex=Sex.FEMALE)


def test_ptb_header_comments() -> None:
    info = parse_header_comments(wfdb.rdheader(str(WFDB_DIR / "s0010_re")).comments)
    assert info.age_years == 81.0
    assert info.sex is Sex.FEMALE
    assert info.reason_for_admission == "Myocardial infarction"
    assert info.acute_infarction_localization == "infero-latera"
    angio = dict(info.angiography)
    assert (
        angio["Left coronary artery stenoses (RIVA)"] == "RIVA 70% proximal to ramus diagonalis_2"
    )
    assert angio["Number of coronary vessels involved"] == "1"
    assert angio["Right coronary artery stenoses (RCA)"] == "No stenoses"
    assert ("Smoker", "no") in info.fields


def test_header_comment_dialects() -> None:
    assert parse_header_comments(["# Age: 74", "# Sex: Male", "# Dx: 164889003, 59118001"]) == (
        HeaderInfo(
            age_years=74.0,
            sex=Sex.MALE,
            dx_snomed=("164889003", "59118001"),
            fields=(("Age", "74"), ("Sex", "Male"), ("Dx", "164889003, 59118001")),
        )
    )
    info = parse_header_comments(["age: n/a", "sex: ?", "Acute infarction (localization): no"])
    assert info.demographics == Demographics()
    assert info.acute_infarction_localization is None
    assert parse_header_comments(["Age: 300"]).age_years == 90.0  # PTB-XL's "over 89"
    assert parse_header_comments([]) == HeaderInfo()


def test_microvolt_units_and_digital_only_records() -> None:
    rec = wfdb.rdrecord(str(WFDB_DIR / "HR06000"))
    reference = record_from_wfdb(rec)
    rec.p_signal = rec.p_signal * 1000.0
    rec.units = ["uV"] * 12
    assert np.allclose(record_from_wfdb(rec).signals_mv, reference.signals_mv, atol=1e-6)

    digital = wfdb.rdrecord(str(WFDB_DIR / "HR06000"), physical=False)
    assert digital.p_signal is None
    assert np.allclose(record_from_wfdb(digital).signals_mv, reference.signals_mv, atol=1e-6)


def test_missing_duplicate_and_bad_units() -> None:
    rec = wfdb.rdrecord(str(WFDB_DIR / "HR06000"))
    rec.sig_name = [*rec.sig_name[:11], "MLII"]
    with pytest.raises(LeadError, match="V6"):
        record_from_wfdb(rec)
    rec.sig_name = [*rec.sig_name[:11], "v5"]
    with pytest.raises(LeadError, match="twice"):
        record_from_wfdb(rec)
    rec = wfdb.rdrecord(str(WFDB_DIR / "HR06000"))
    rec.units = ["mmHg"] * 12
    with pytest.raises(WaveformError):
        record_from_wfdb(rec)


def test_nan_samples_become_waveform_error() -> None:
    rec = wfdb.rdrecord(str(WFDB_DIR / "HR06000"))
    rec.p_signal[10, 3] = np.nan
    with pytest.raises(WaveformError) as info:
        record_from_wfdb(rec)
    assert info.value.location == "signals_mv"
