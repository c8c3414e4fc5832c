"""HL7 v2.3-2.8 chapter-7 waveforms (MA, CD, TS, ED aECG), versions, ORC, derived leads."""

from __future__ import annotations

import numpy as np
import pytest

from inference.record import LEADS_12, EcgRecord
from mappers.errors import (
    DuplicateLeadError,
    LengthMismatchError,
    MissingLeadError,
    SampleRangeError,
    SamplingRateError,
    UnitError,
    UnknownLeadError,
    VersionError,
    WaveformError,
    XmlSecurityError,
    error_text,
)
from mappers.hl7v2 import build_oru_r01, parse_oru_r01
from tests.mappers.conftest import NOW, small_record
from tests.mappers.hl7_builders import build_ed_aecg, build_ma, header


def test_ma_with_cd_round_trip_real_record(record: EcgRecord) -> None:
    _, back = parse_oru_r01(build_ma(record, control_id="MA1", now=NOW))
    assert np.array_equal(back.signals_mv, record.signals_mv)
    assert back.fs_hz == 500.0
    assert back.acquired_at == record.acquired_at
    assert back.demographics == record.demographics


def test_cd_sensitivity_and_baseline_are_applied() -> None:
    rec = small_record()
    msg = build_ma(rec, control_id="MA2", now=NOW, sensitivity_uv=0.5, baseline=2048)
    _, back = parse_oru_r01(msg)
    assert np.allclose(back.signals_mv, rec.signals_mv, atol=0.0006)


LIMB = ("I", "II", "III", "AVR", "AVL", "AVF")
PRECORDIAL = tuple(f"V{i}" for i in range(1, 7))
PRECORDIAL_CODES = tuple(str(131331 + i) for i in range(6))


@pytest.mark.parametrize(
    "names",
    [
        tuple(f"LEAD_{n}" for n in LIMB + PRECORDIAL),
        tuple(f"MDC_ECG_LEAD_{n}" for n in LIMB + PRECORDIAL),
        ("131329", "131330", "131389", "131390", "131391", "131392", *PRECORDIAL_CODES),
    ],
)
def test_cd_lead_spellings(names: tuple[str, ...]) -> None:
    rec = small_record()
    _, back = parse_oru_r01(build_ma(rec, control_id="MA3", now=NOW, names=names))
    assert np.array_equal(back.signals_mv, rec.signals_mv)


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.6", "2.7", "2.8"])
def test_versions_2_3_to_2_8(version: str) -> None:
    rec = small_record()
    msg = build_oru_r01(rec, control_id="V1", now=NOW).replace(b"|2.5.1", f"|{version}".encode())
    msh, back = parse_oru_r01(msg)
    assert msh.version_id == version
    assert np.array_equal(back.signals_mv, rec.signals_mv)


def test_unsupported_version_is_ar_203() -> None:
    msg = build_oru_r01(small_record(), control_id="V2", now=NOW).replace(b"|2.5.1", b"|2.1")
    with pytest.raises(VersionError) as info:
        parse_oru_r01(msg)
    assert info.value.ack_code == "AR" and info.value.hl7_code == 203
    assert info.value.location == "MSH[1].12"


def test_orc_identifiers_when_obr_has_none() -> None:
    rec = small_record()
    segs = build_oru_r01(rec, control_id="O1", now=NOW).decode().split("\r")
    obr = next(i for i, s in enumerate(segs) if s.startswith("OBR"))
    segs[obr] = "OBR|1|||11524-6^EKG study^LN|||20240102030405"
    segs.insert(obr, "ORC|RE|PLACER-9|FILLER-7")
    _, back = parse_oru_r01("\r".join(segs).encode())
    assert back.record_id == "FILLER-7"
    assert back.identifier("placer") == "PLACER-9"


def test_only_i_and_ii_derive_the_other_limb_leads() -> None:
    rec = small_record()
    segs = build_oru_r01(rec, control_id="D1", now=NOW).decode().split("\r")
    keep = [
        s
        for s in segs
        if not any(f"MDC_ECG_ELEC_POTL_{x}^" in s for x in ("III", "AVR", "AVL", "AVF"))
    ]
    _, back = parse_oru_r01("\r".join(keep).encode())
    i, ii = rec.lead("I"), rec.lead("II")
    assert np.allclose(back.lead("III"), ii - i)
    assert np.allclose(back.lead("aVR"), -(i + ii) / 2)
    assert back.lead_names == LEADS_12


def test_ed_aecg_payload(record: EcgRecord) -> None:
    _, back = parse_oru_r01(build_ed_aecg(record, control_id="ED1", now=NOW))
    assert np.array_equal(back.signals_mv, record.signals_mv)
    assert back.record_id == record.record_id  # OBR filler wins over the document id
    assert back.demographics == record.demographics


def test_ed_with_doctype_is_refused() -> None:
    import base64

    xml = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'
    segs = header(small_record(), control_id="ED2", now=NOW)
    segs.append(f"OBX|1|ED|AECG^^L|1|ECG^text^XML^Base64^{base64.b64encode(xml).decode()}")
    with pytest.raises(XmlSecurityError) as info:
        parse_oru_r01("\r".join(segs).encode())
    assert info.value.location.startswith("OBX[1].5")


def _ma_with(cd: str, ma: str) -> bytes:
    segs = header(small_record(), control_id="E1", now=NOW)
    segs += [f"OBX|1|CD|0^CHANNEL DEF^L|1|{cd}", f"OBX|2|MA|WAV^^L|1|{ma}"]
    return "\r".join(segs).encode()


CD12 = "~".join(f"{i}&{n}^^1&uV^^100" for i, n in enumerate(LEADS_12, start=1))
ROW = "^".join(["1"] * 12)


@pytest.mark.parametrize(
    ("cd", "ma", "error", "location"),
    [
        (
            CD12,
            "~".join([ROW] * 50 + ["^".join(["1"] * 11)] + [ROW] * 49),
            WaveformError,
            "OBX[2].5",
        ),
        (CD12.replace("&V6^", "&V9^"), "~".join([ROW] * 100), UnknownLeadError, "OBX[1].5(12)"),
        (CD12.replace("&V6^", "&V5^"), "~".join([ROW] * 100), DuplicateLeadError, "OBX[1].5(12)"),
        (CD12.replace("1&uV", "1&mmHg"), "~".join([ROW] * 100), UnitError, "OBX[1].5.3"),
        (CD12.replace("^100", "^0"), "~".join([ROW] * 100), SamplingRateError, "OBX[1].5.5"),
        (
            CD12.replace("^100", "^1000000"),
            "~".join([ROW] * 100),
            SamplingRateError,
            "OBX[1].5(12).5",
        ),
        (CD12, "~".join([ROW] * 99 + [ROW.replace("1", "nan", 1)]), WaveformError, "OBX[2].5"),
        (
            CD12.replace("1&uV", "1000&uV"),
            "~".join([ROW.replace("1", "40", 1)] * 100),
            SampleRangeError,
            "OBX[1].5",
        ),
    ],
)
def test_bad_input_has_its_own_error(
    cd: str, ma: str, error: type[Exception], location: str
) -> None:
    with pytest.raises(error) as info:
        parse_oru_r01(_ma_with(cd, ma))
    assert getattr(info.value, "location") == location  # noqa: B009
    assert location in error_text(info.value)  # type: ignore[arg-type]


def test_lengths_disagree_and_missing_lead_errors() -> None:
    segs = build_oru_r01(small_record(), control_id="L1", now=NOW).decode().split("\r")
    segs[-1] = segs[-1].replace("|F|||", "|F|||").replace("^", "^", 1)
    fields = segs[-1].split("|")
    fields[5] = fields[5] + "^0"
    with pytest.raises(LengthMismatchError):
        parse_oru_r01("\r".join([*segs[:-1], "|".join(fields)]).encode())
    with pytest.raises(MissingLeadError):
        parse_oru_r01("\r".join(segs[:-1]).encode())
