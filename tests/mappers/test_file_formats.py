"""HL7 aECG XML and DICOM 12-lead ECG: real-record fixtures, builders' round trips, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from inference.record import EcgRecord
from integration.samples import load_samples
from mappers.aecg_in import record_from_aecg
from mappers.aecg_out import build_aecg
from mappers.dicom_ecg import build_dicom_ecg, record_from_dicom
from mappers.errors import (
    DuplicateLeadError,
    MappingError,
    MessageSyntaxError,
    SamplingRateError,
    UnitError,
    XmlSecurityError,
)
from tests.mappers.conftest import FIXTURES, small_record

AECG = FIXTURES / "aecg" / "ptbxl_first.xml"
DICOM = FIXTURES / "dicom" / "ptbxl_first.dcm"


@pytest.fixture(scope="module")
def first() -> EcgRecord:
    return load_samples()[0].record


def test_aecg_fixture_golden(first: EcgRecord) -> None:
    rec = record_from_aecg(AECG.read_bytes())
    assert np.array_equal(rec.signals_mv, first.signals_mv)
    assert rec.fs_hz == 500.0 and rec.acquired_at == first.acquired_at
    assert rec.demographics == first.demographics
    assert rec.patient is not None and rec.patient.value == "PTBXL193"


def test_dicom_fixture_golden(first: EcgRecord) -> None:
    rec = record_from_dicom(DICOM.read_bytes())
    assert np.array_equal(rec.signals_mv, first.signals_mv)
    assert rec.fs_hz == 500.0 and rec.acquired_at == first.acquired_at
    assert rec.demographics == first.demographics


def test_fixtures_match_the_builders(first: EcgRecord) -> None:
    assert build_aecg(first) == AECG.read_bytes()
    assert (
        build_dicom_ecg(first, sop_instance_uid="2.25.299792458000000000001") == DICOM.read_bytes()
    )


def test_aecg_sub_microvolt_round_trip() -> None:
    rec = small_record()
    rows = rec.signals_mv + np.float32(0.0001234)
    rec2 = EcgRecord(rows.astype(np.float32), rec.lead_names, rec.fs_hz, "x")
    back = record_from_aecg(build_aecg(rec2)).signals_mv
    assert np.abs(back - rec2.signals_mv).max() <= 1e-6  # 1 nV quantisation


@pytest.mark.parametrize(
    "xml",
    [
        b'<?xml version="1.0"?><!DOCTYPE AnnotatedECG [<!ENTITY x "y">]><AnnotatedECG/>',
        b'<!DOCTYPE AnnotatedECG SYSTEM "http://evil/x.dtd"><AnnotatedECG xmlns="urn:hl7-org:v3"/>',
        b'<?xml version="1.0"?>\n<!doctype a><a/>',
    ],
)
def test_aecg_doctype_is_refused(xml: bytes) -> None:
    with pytest.raises(XmlSecurityError):
        record_from_aecg(xml)


def test_aecg_errors_name_the_element(first: EcgRecord) -> None:
    text = AECG.read_text()
    with pytest.raises(MessageSyntaxError):
        record_from_aecg(b"<AnnotatedECG")
    with pytest.raises(MessageSyntaxError):
        record_from_aecg(b"<Other xmlns='urn:hl7-org:v3'/>")
    with pytest.raises(UnitError) as u:
        record_from_aecg(
            text.replace('scale value="1" unit="uV"', 'scale value="1" unit="mmHg"', 1)
        )
    assert u.value.location.endswith("/value/scale")
    with pytest.raises(SamplingRateError):
        record_from_aecg(text.replace('increment value="0.002"', 'increment value="0"'))
    with pytest.raises(DuplicateLeadError):
        record_from_aecg(text.replace('MDC_ECG_LEAD_II"', 'MDC_ECG_LEAD_I"'))


def test_dicom_not_dicom_and_truncated() -> None:
    with pytest.raises(MessageSyntaxError):
        record_from_dicom(b"not dicom at all")
    data = DICOM.read_bytes()
    with pytest.raises(MappingError):
        record_from_dicom(data[: len(data) // 2])
