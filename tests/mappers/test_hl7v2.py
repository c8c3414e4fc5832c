"""HL7 v2.5.1 ORU^R01 waveform mapping and ACKs."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.record import LEADS_12, EcgRecord, PatientRef, Sex
from mappers.errors import (
    DataTypeError,
    LeadError,
    MappingError,
    MessageTypeError,
    MissingFieldError,
    SampleRangeError,
    SegmentError,
    WaveformError,
)
from mappers.hl7v2 import (
    Msh,
    build_ack,
    build_oru_r01,
    fallback_msh,
    parse_msh,
    parse_oru_r01,
)
from tests.mappers.conftest import NOW, small_record

SMALL = build_oru_r01(small_record(), control_id="MSG1", now=NOW)


def segments(message: bytes) -> list[str]:
    return message.decode().split("\r")


def join(segs: list[str]) -> bytes:
    return "\r".join(segs).encode()


def replace_field(message: bytes, seg_index: int, field: int, value: str) -> bytes:
    segs = segments(message)
    fields = segs[seg_index].split("|")
    fields += [""] * (field + 1 - len(fields))
    fields[field] = value
    segs[seg_index] = "|".join(fields)
    return join(segs)


def lead_obx_index(lead: str) -> int:
    """Index (in the segment list) of the OBX carrying `lead` in a built message."""
    return 4 + LEADS_12.index(lead)  # MSH, PID, OBR, rate OBX, then the 12 leads


# --- round trips ------------------------------------------------------------------------


def test_round_trip_real_ptbxl_record_is_lossless(record: EcgRecord) -> None:
    message = build_oru_r01(record, control_id="MSG00042", now=NOW)
    msh, back = parse_oru_r01(message)
    assert msh.control_id == "MSG00042"
    assert msh.message_type == "ORU^R01"
    assert back.lead_names == LEADS_12
    assert back.fs_hz == 500.0
    assert np.array_equal(back.signals_mv, record.signals_mv)
    assert np.abs(back.signals_mv - record.signals_mv).max() * 1000.0 < 1.0
    assert back.record_id == record.record_id
    assert back.acquired_at == record.acquired_at
    assert back.patient == record.patient
    assert back.demographics == record.demographics
    ids = dict(back.identifiers)
    assert ids == {"msh10": "MSG00042", "sending_facility": "WARD", "filler": "ptbxl-9879"}


@pytest.mark.parametrize("units", ["uV", "mV", "V"])
def test_round_trip_in_each_voltage_unit(record: EcgRecord, units: str) -> None:
    _, back = parse_oru_r01(build_oru_r01(record, control_id="M", now=NOW, units=units))
    assert np.abs(back.signals_mv - record.signals_mv).max() < 1e-3  # within 1 uV


def test_round_trip_keeps_sub_microvolt_resolution() -> None:
    # 0.5 uV steps (adc gain 2000/mV), as in the PTB Diagnostic ECG Database
    steps = np.random.default_rng(1).integers(-4000, 4000, size=(12, 100))
    rec = EcgRecord((steps / 2000.0).astype(np.float32), LEADS_12, 100.0, "r2")
    _, back = parse_oru_r01(build_oru_r01(rec, control_id="M", now=NOW))
    assert np.array_equal(back.signals_mv, rec.signals_mv)


def test_round_trip_of_arbitrary_floats_is_within_a_nanovolt() -> None:
    values = np.random.default_rng(2).normal(scale=0.5, size=(12, 100)).astype(np.float32)
    rec = EcgRecord(values, LEADS_12, 100.0, "r3")
    _, back = parse_oru_r01(build_oru_r01(rec, control_id="M", now=NOW))
    assert np.abs(back.signals_mv - rec.signals_mv).max() <= 1e-6


def test_round_trip_patient_systems_and_reference_only() -> None:
    base = small_record()
    for patient in (
        PatientRef(system="http://hospital.example/mrn?x=1&y=2", value="A^B|C"),
        PatientRef(system=None, value="123"),
        PatientRef(reference="Patient/77"),
    ):
        rec = EcgRecord(base.signals_mv, LEADS_12, base.fs_hz, "r", patient=patient)
        _, back = parse_oru_r01(build_oru_r01(rec, control_id="M", now=NOW))
        if patient.value is not None:
            assert back.patient == patient
        else:
            assert back.patient == PatientRef(value="Patient/77")


def test_parses_a_12_lead_10_s_message_fast(record: EcgRecord) -> None:
    message = build_oru_r01(record, control_id="M", now=NOW)
    start = time.perf_counter()
    parse_oru_r01(message)
    assert time.perf_counter() - start < 0.5


# --- inbound variants -------------------------------------------------------------------


@pytest.mark.parametrize("sep", ["\n", "\r\n"])
def test_accepts_lf_and_crlf_segment_terminators(sep: str) -> None:
    _, back = parse_oru_r01(SMALL.replace(b"\r", sep.encode()))
    assert back.record_id == "small-1"


def test_accepts_mllp_framing_and_trailing_cr() -> None:
    _, back = parse_oru_r01(b"\x0b" + SMALL + b"\r\x1c\r")
    assert back.n_samples == 100


def test_honours_the_senders_encoding_characters() -> None:
    odd = SMALL.replace(b"^~\\&", b"#~\\&", 1).replace(b"^", b"#")
    msh, back = parse_oru_r01(odd)
    assert msh.encoding_chars == "#~\\&"
    assert back.patient == PatientRef(system="HOSP", value="P1")
    assert np.array_equal(back.signals_mv, small_record().signals_mv)


@pytest.mark.parametrize(
    "ident",
    [
        "I",
        "MDC_ECG_LEAD_I",
        "131073^MDC_ECG_LEAD_I^MDC",
        "^Lead I",
        "LEAD_I^^L",
        "LP7386-8^Lead I^LN",
        "272729005^Lead I^SCT",
    ],
)
def test_lead_identifier_spellings(ident: str) -> None:
    msg = replace_field(SMALL, lead_obx_index("I"), 3, ident)
    _, back = parse_oru_r01(msg)
    assert np.array_equal(back.lead("I"), small_record().lead("I"))


@pytest.mark.parametrize(
    ("ident", "value", "units", "fs"),
    [
        ("0^MDC_ATTR_SAMP_RATE", "100", "Hz", 100.0),
        ("SAMPLING_FREQUENCY", "100", "", 100.0),
        ("^MDC_ATTR_SAMP_RATE^MDC", "0.1", "kHz^kHz^UCUM", 100.0),
        ("^MDC_ATTR_TIME_PD_SAMP^MDC", "10", "ms", 100.0),
    ],
)
def test_sampling_rate_conventions(ident: str, value: str, units: str, fs: float) -> None:
    msg = replace_field(SMALL, 3, 3, ident)
    msg = replace_field(msg, 3, 5, value)
    msg = replace_field(msg, 3, 6, units)
    assert parse_oru_r01(msg)[1].fs_hz == pytest.approx(fs)


def test_skips_unknown_extra_leads() -> None:
    segs = segments(SMALL)
    extra = segs[lead_obx_index("V6")].replace("131336^MDC_ECG_ELEC_POTL_V6^MDC", "VX")
    _, back = parse_oru_r01(join([*segs, extra]))
    assert back.lead_names == LEADS_12


def test_timezone_offset_and_age() -> None:
    msg = replace_field(SMALL, 2, 7, "200001021530+0130")
    msg = replace_field(msg, 1, 7, "19491231")
    _, back = parse_oru_r01(msg)
    assert back.acquired_at == datetime(
        2000, 1, 2, 15, 30, tzinfo=timezone(timedelta(hours=1, minutes=30))
    )
    assert back.demographics.age_years == 50.0
    assert back.demographics.sex is Sex.MALE


def test_record_id_falls_back_to_msh10_and_keeps_placer() -> None:
    msg = replace_field(SMALL, 2, 3, "")
    msg = replace_field(msg, 2, 2, "PL-9^CPOE")
    _, back = parse_oru_r01(msg)
    assert back.record_id == "MSG1"
    assert back.identifier("placer") == "PL-9"
    assert back.identifier("filler") is None


def test_pid_and_obr_are_optional() -> None:
    segs = [s for s in segments(SMALL) if not s.startswith(("PID", "OBR"))]
    _, back = parse_oru_r01(join(segs))
    assert back.patient is None
    assert back.acquired_at is not None  # from OBX-14
    assert back.record_id == "MSG1"


# --- bad inputs -------------------------------------------------------------------------


def expect(
    message: bytes, error: type[MappingError], location: str, ack_code: str = "AE"
) -> MappingError:
    with pytest.raises(error) as info:
        parse_oru_r01(message)
    assert info.value.location == location
    assert info.value.ack_code == ack_code
    return info.value


def test_not_oru_r01_is_message_type_error() -> None:
    msg = replace_field(SMALL, 0, 8, "ADT^A01^ADT_A01")
    expect(msg, MessageTypeError, "MSH[1].9", ack_code="AR")


def test_no_msh_is_segment_error() -> None:
    expect(b"PID|1||x", SegmentError, "MSH")
    expect(b"", SegmentError, "MSH")


def test_missing_control_id() -> None:
    expect(replace_field(SMALL, 0, 9, ""), MissingFieldError, "MSH[1].10")


def test_missing_lead() -> None:
    segs = segments(SMALL)
    del segs[lead_obx_index("V3")]
    err = expect(join(segs), LeadError, "OBX")
    assert "V3" in str(err)


def test_unrecognised_lead_is_named_when_a_lead_is_missing() -> None:
    err = expect(replace_field(SMALL, lead_obx_index("V3"), 3, "V-3"), LeadError, "OBX[10].3")
    assert "V3" in str(err)


def test_duplicate_lead() -> None:
    segs = segments(SMALL)
    expect(join([*segs, segs[lead_obx_index("V2")]]), LeadError, "OBX[14].3")


def test_non_numeric_samples() -> None:
    segs = segments(SMALL)
    i = lead_obx_index("V2")
    segs[i] = segs[i].replace("|0^", "|0^abc^", 1)
    assert "abc" in segs[i]
    expect(join(segs), WaveformError, "OBX[9].5")


def test_empty_sample_component() -> None:
    segs = segments(SMALL)
    i = lead_obx_index("aVL")
    fields = segs[i].split("|")
    fields[5] = fields[5].replace("^", "^^", 1)
    segs[i] = "|".join(fields)
    expect(join(segs), WaveformError, "OBX[6].5")


def test_lengths_disagree() -> None:
    segs = segments(SMALL)
    i = lead_obx_index("V5")
    fields = segs[i].split("|")
    fields[5] = fields[5].rsplit("^", 1)[0]
    segs[i] = "|".join(fields)
    err = expect(join(segs), WaveformError, "OBX[12].5")
    assert "99 samples" in str(err)


def test_no_sampling_rate() -> None:
    segs = [s for s in segments(SMALL) if "MDC_ATTR_SAMP_RATE" not in s]
    expect(join(segs), MissingFieldError, "OBX")


def test_bad_sampling_rate_value_and_unit() -> None:
    expect(replace_field(SMALL, 3, 5, "fast"), WaveformError, "OBX[1].5")
    expect(replace_field(SMALL, 3, 6, "bpm"), WaveformError, "OBX[1].6")


def test_rate_outside_domain_range_becomes_waveform_error() -> None:
    err = expect(replace_field(SMALL, 3, 5, "1"), WaveformError, "OBX[1].5")
    assert "sampling rate" in str(err)


def test_non_voltage_units() -> None:
    expect(
        replace_field(SMALL, lead_obx_index("II"), 6, "mmHg^mmHg^UCUM"), WaveformError, "OBX[3].6"
    )


def test_missing_units() -> None:
    expect(replace_field(SMALL, lead_obx_index("II"), 6, ""), MissingFieldError, "OBX[3].6")


def test_units_mismatch_caught_by_the_16_bit_range_check() -> None:
    # microvolt numbers labelled volts: beyond +-32.767 mV after scaling
    err = expect(replace_field(SMALL, lead_obx_index("I"), 6, "V"), SampleRangeError, "OBX[2].5")
    assert "mV" in str(err)


def test_bad_dates() -> None:
    expect(replace_field(SMALL, 2, 7, "yesterday"), DataTypeError, "OBR[1].7")
    expect(replace_field(SMALL, 2, 7, "20241345"), DataTypeError, "OBR[1].7")
    expect(replace_field(SMALL, 1, 7, "21000101"), DataTypeError, "PID[1].7")


def test_no_waveform_obx() -> None:
    segs = [s for s in segments(SMALL) if "|NA|" not in s]
    expect(join(segs), SegmentError, "OBX")


def test_garbage_segment() -> None:
    expect(SMALL + b"\rthis is not a segment", SegmentError, "segment 17")


def test_seed_crasher() -> None:
    with pytest.raises(MappingError):
        parse_oru_r01(b"MSH|^||||||||^A|||2.2\r^AA")


# --- MSH and ACKs -----------------------------------------------------------------------

INBOUND = (
    b"MSH|^~\\&|CART|WARD^1.2.3^ISO|ECGBRIDGE|HOSP|20240101120000||ORU^R01^ORU_R01|MSG00001|P|"
    b"2.5.1|||AL|NE\rPID|1\rOBX|1|NA|I||bad"
)


def test_parse_msh_reads_the_header_even_when_the_body_is_bad() -> None:
    msh = parse_msh(INBOUND)
    assert msh == Msh(
        field_sep="|",
        encoding_chars="^~\\&",
        sending_application="CART",
        sending_facility="WARD^1.2.3^ISO",
        receiving_application="ECGBRIDGE",
        receiving_facility="HOSP",
        message_datetime="20240101120000",
        message_type="ORU^R01",
        control_id="MSG00001",
        processing_id="P",
        version_id="2.5.1",
        accept_ack_type="AL",
        application_ack_type="NE",
        message_structure="ORU_R01",
    )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"", SegmentError),
        (b"hello", SegmentError),
        (b"MSH|^~\\&|a|b|c|d|||ORU^R01|", MissingFieldError),
        (b"MSH", MessageTypeError),
        (b"MSHa^~\\&|", MessageTypeError),
        (b"\xff\xfe", SegmentError),
    ],
)
def test_parse_msh_errors(message: bytes, error: type[MappingError]) -> None:
    with pytest.raises(error):
        parse_msh(message)


def hl7apy_strict(ack: bytes) -> object:
    return parse_message(ack.decode(), validation_level=VALIDATION_LEVEL.STRICT)


def test_ack_aa_content_and_validity() -> None:
    ack = build_ack(parse_msh(INBOUND), "AA", control_id="ACK1", now=NOW)
    segs = ack.decode().split("\r")
    assert segs == [
        "MSH|^~\\&|ECGBRIDGE|HOSP|CART|WARD^1.2.3^ISO|20240305143000+0000||ACK^R01^ACK|ACK1|P|2.5.1",
        "MSA|AA|MSG00001",
    ]
    msg = hl7apy_strict(ack)
    assert msg.validate()  # type: ignore[attr-defined]


def test_ack_with_error_has_err_segment() -> None:
    error = WaveformError("lead V2: samples are not all numbers | ^ & ~", location="OBX[3].5")
    ack = build_ack(parse_msh(INBOUND), "AE", control_id="ACK2", now=NOW, error=error)
    segs = ack.decode().split("\r")
    assert segs[1].startswith("MSA|AE|MSG00001|OBX[3].5: lead V2")
    err = segs[2].split("|")
    assert err[0] == "ERR"
    assert err[2] == "OBX^3^5"
    assert err[3] == "102^Data type error^HL70357"
    assert err[4] == "E"
    assert err[8] == "OBX[3].5: lead V2: samples are not all numbers \\F\\ \\S\\ \\T\\ \\R\\"
    msg = hl7apy_strict(ack)
    assert msg.validate()  # type: ignore[attr-defined]
    assert msg.err.err_3.err_3_1.value == "102"  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", ["CA", "CE", "CR", "AR"])
def test_ack_codes_and_text(code: str) -> None:
    ack = build_ack(parse_msh(INBOUND), code, control_id="A", now=NOW, text="queued")
    assert ack.decode().split("\r")[1] == f"MSA|{code}|MSG00001|queued"
    hl7apy_strict(ack)


def test_ack_rejects_unknown_codes() -> None:
    with pytest.raises(ValueError, match="ACK code"):
        build_ack(parse_msh(INBOUND), "OK", control_id="A", now=NOW)


def test_ack_for_unsupported_message_echoes_its_trigger() -> None:
    inbound = replace_field(SMALL, 0, 8, "ADT^A01^ADT_A01")
    with pytest.raises(MessageTypeError) as info:
        parse_oru_r01(inbound)
    ack = build_ack(parse_msh(inbound), "AR", control_id="A", now=NOW, error=info.value)
    assert "|ACK^A01^ACK|" in ack.decode()
    assert "ERR||MSH^1^9|200^Unsupported message type^HL70357|E" in ack.decode()


def test_fallback_msh_answers_unreadable_messages() -> None:
    error = SegmentError("message does not start with an MSH segment", location="MSH")
    ack = build_ack(fallback_msh(), "AR", control_id="A9", now=NOW, error=error)
    segs = ack.decode().split("\r")
    assert segs[0].startswith("MSH|^~\\&|||||")
    assert segs[1].startswith("MSA|AR||")
    hl7apy_strict(ack)


def test_ack_reencodes_nonstandard_delimiters() -> None:
    inbound = INBOUND.replace(b"^", b"#")
    ack = build_ack(parse_msh(inbound), "AA", control_id="A", now=NOW)
    assert "|CART|WARD^1.2.3^ISO|" in ack.decode()


def test_ack_of_built_message_and_naive_now() -> None:
    msh, _ = parse_oru_r01(SMALL)
    ack = build_ack(msh, "AA", control_id="A", now=datetime(2024, 1, 1, 0, 0))
    assert "|20240101000000+0000|" in ack.decode()


# --- fuzzing: every input yields a record or a MappingError, quickly ----------------------


def check_total(message: bytes) -> None:
    start = time.perf_counter()
    with contextlib.suppress(MappingError):
        parse_oru_r01(message)
    with contextlib.suppress(MappingError):
        parse_msh(message)
    assert time.perf_counter() - start < 0.1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_total(data)
    check_total(b"MSH|^~\\&|" + data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(SMALL) - 1),
            st.integers(min_value=0, max_value=40),
            st.binary(max_size=12)
            | st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\\X0\\", b"\\F"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_valid_message(edits: list[tuple[int, int, bytes]]) -> None:
    message = SMALL
    for pos, length, insert in edits:
        message = message[:pos] + insert + message[pos + length :]
    check_total(message)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5.1",
                "PID|1||x^^^&&ISO~^^^|||20240101|M",
                "PID|1||^^^|||99999999",
                "OBR|1|||||20240101",
                "OBX|1|NM|MDC_ATTR_SAMP_RATE||0|Hz",
                "OBX|1|NM|MDC_ATTR_SAMP_RATE||nan|Hz",
                "OBX|1|NM|MDC_ATTR_TIME_PD_SAMP||1e-300|s",
                "OBX|1|NA|I||1^2^3|uV",
                "OBX|1|NA|II||inf^2^3|mV",
                "OBX|1|NA|131390||1e40|V",
                "OBX|1|NA|||1|uV",
                "OBX|",
                "OBX",
                "MSH|^~\\&",
            ]
        ),
        max_size=20,
    )
)
def test_fuzz_segment_soup(segs: list[str]) -> None:
    check_total("\r".join(["MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5.1", *segs]).encode())
