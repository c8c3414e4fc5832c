"""EcgRecord -> HL7 v3 annotated ECG (FDA aECG, AnnotatedECG R1) XML; the inverse of
`mappers.aecg_in`.

One RHYTHM series, a TIME_ABSOLUTE GLIST_TS sequence (increment 1/fs s) and one SLIST_PQ
sequence per lead coded ``MDC_ECG_LEAD_<lead>`` (codeSystem MDC 2.16.840.1.113883.6.24):
origin 0 uV, scale 10**-k uV with the fewest decimals k that reproduce the float32 samples
(integer microvolts for PTB-XL), so the document reads back bit for bit. Built with the
standard library's ElementTree writer (writing is not an XXE risk); pure, returns bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from xml.etree import ElementTree as ET

from inference.record import EcgRecord, Sex
from mappers.aecg_in import NS
from mappers.hl7v2_wire import format_date
from mappers.sample_codec import quantize

MDC_OID = "2.16.840.1.113883.6.24"
ACT_CODE_OID = "2.16.840.1.113883.5.4"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_LEAD_CODE = {"aVR": "AVR", "aVL": "AVL", "aVF": "AVF"}


def _el(parent: ET.Element, tag: str, **attrs: str) -> ET.Element:
    return ET.SubElement(parent, f"{{{NS}}}{tag}", attrs)


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f")[:-3]


def build_aecg(record: EcgRecord, *, document_root: str = "2.25.1") -> bytes:
    """`record` as an aECG document (UTF-8 bytes). `document_root` is the id root OID; the
    record id is its extension."""
    ET.register_namespace("", NS)
    ET.register_namespace("xsi", _XSI)
    root = ET.Element(f"{{{NS}}}AnnotatedECG")
    _el(root, "id", root=document_root, extension=record.record_id)
    _el(root, "code", code="93000", codeSystem="2.16.840.1.113883.6.12")
    start = record.acquired_at
    if start is not None:
        _el(_el(root, "effectiveTime"), "low", value=_ts(start))
    subject = _el(
        _el(
            _el(
                _el(_el(_el(root, "componentOf"), "timepointEvent"), "componentOf"),
                "subjectAssignment",
            ),
            "subject",
        ),
        "trialSubject",
    )
    if record.patient is not None and record.patient.value:
        system = record.patient.system or ""
        oid = system[8:] if system.startswith("urn:oid:") else "2.25.0"
        _el(subject, "id", root=oid, extension=record.patient.value)
    person = _el(subject, "subjectDemographicPerson")
    sex = {Sex.MALE: "M", Sex.FEMALE: "F"}.get(record.demographics.sex, "UN")
    _el(person, "administrativeGenderCode", code=sex, codeSystem="2.16.840.1.113883.5.1")
    if record.demographics.age_years is not None and start is not None:
        at = start.astimezone(UTC).date()
        years = int(record.demographics.age_years)
        try:
            born = at.replace(year=at.year - years)
        except ValueError:
            born = at.replace(year=at.year - years, day=28)
        _el(person, "birthTime", value=format_date(born))
    series = _el(_el(root, "component"), "series")
    _el(series, "code", code="RHYTHM", codeSystem=ACT_CODE_OID)
    if start is not None:
        _el(_el(series, "effectiveTime"), "low", value=_ts(start))
    seq_set = _el(_el(series, "component"), "sequenceSet")
    time_seq = _el(_el(seq_set, "component"), "sequence")
    _el(time_seq, "code", code="TIME_ABSOLUTE", codeSystem=ACT_CODE_OID)
    value = _el(time_seq, "value", **{f"{{{_XSI}}}type": "GLIST_TS"})
    _el(value, "head", value=_ts(start) if start is not None else "19700101000000.000")
    _el(value, "increment", value=repr(1.0 / record.fs_hz), unit="s")
    for lead in record.lead_names:
        seq = _el(_el(seq_set, "component"), "sequence")
        _el(seq, "code", code=f"MDC_ECG_LEAD_{_LEAD_CODE.get(lead, lead)}", codeSystem=MDC_OID)
        value = _el(seq, "value", **{f"{{{_XSI}}}type": "SLIST_PQ"})
        ints, decimals = quantize(record.lead(lead), "uV")
        _el(value, "origin", value="0", unit="uV")
        _el(value, "scale", value=f"1E-{decimals}" if decimals else "1", unit="uV")
        digits = _el(value, "digits")
        digits.text = " ".join(map(str, ints.tolist()))
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
