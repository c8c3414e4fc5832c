"""HL7 v2.3-2.8 ORU^R01 waveform results (chapter 7) -> EcgRecord; ACKs (v2.5.1).

Inbound parsing is a fast path (split + numpy), not hl7apy, which needs seconds per
12-lead message. What is read:

* MSH: delimiters from MSH-1/MSH-2, MSH-9 must be ``ORU^R01``, MSH-10 control id, MSH-12
  version 2.3 to 2.8.2 (empty is read as 2.5.1; others are a `VersionError`, AR 203).
* PID (optional): PID-3 first identifier with a value -> `PatientRef` (system from the
  assigning authority PID-3.4: ``urn:oid:<uid>`` for ISO, the universal id for URI/other
  types, else the namespace id); PID-7 birth date + acquisition time -> age in full years;
  PID-8 ``M``/``F`` -> `Sex` (anything else is unknown).
* OBR/ORC (optional): OBR-3 filler / OBR-2 placer order number (ORC-3 / ORC-2 when the OBR
  ones are empty), OBR-7 observation date/time -> `acquired_at` (timezone-aware; UTC when no
  offset is sent). A waveform start-time OBX (TS/DTM) wins over OBR-7; OBX-14 of the first
  waveform OBX is the last resort.
* Waveform OBX, value types NA, MA, CD, TS, NM: see `mappers.hl7v2_waveform`. When only I
  and II of the limb leads are sent, III, aVR, aVL and aVF are derived.
* OBX of value type ED whose OBX-5 is ``<source>^<type>^<subtype>^Base64^<data>`` holding an
  HL7 aECG document (type/subtype naming XML): the waveform comes from the document
  (`mappers.aecg_in`); PID/OBR identity and demographics still come from the message.

Sampling-rate convention (read and written by this module): an OBX of value type ``NM``
whose OBX-3 has a component containing ``MDC_ATTR_SAMP_RATE`` (or ``SAMPLING_FREQUENCY``,
``SAMPLE_RATE``), with OBX-5 the rate and OBX-6 ``Hz`` (``kHz`` accepted; empty means Hz).
ecgbridge writes ``OBX|1|NM|^MDC_ATTR_SAMP_RATE^MDC||500|Hz^Hz^UCUM|||||F`` (text-only
coded element: the MDC reference id, without a numeric code). A sampling *interval* is also
accepted: NM OBX-3 containing ``MDC_ATTR_TIME_PD_SAMP`` or ``SAMPLING_INTERVAL``, units
``ms``/``s``/``us``.

Errors are `mappers.errors` leaves with an HL7 location ``SEG[n].f`` (n = occurrence of the
segment in the message, 1-based). `parse_oru_r01` never raises anything else: unexpected
failures become `MessageSyntaxError`.
"""

from __future__ import annotations

import base64
import binascii
from datetime import date, datetime

from inference.errors import EcgValidationError
from inference.record import LEADS_12, Demographics, EcgRecord, PatientRef, Sex
from mappers.aecg_in import record_from_aecg
from mappers.errors import (
    DataTypeError,
    MappingError,
    MessageSyntaxError,
    MessageTypeError,
    MissingFieldError,
    SamplingRateError,
    SegmentError,
    VersionError,
    WaveformError,
)
from mappers.hl7v2_ack import build_ack
from mappers.hl7v2_oru_out import build_oru_r01
from mappers.hl7v2_waveform import Fields, components, get, read_obx
from mappers.hl7v2_wire import (
    Encoding,
    Msh,
    check_segment_id,
    decode_message,
    fallback_msh,
    parse_msh,
    parse_msh_segment,
    parse_ts,
    split_segments,
    unescape,
)

__all__ = [
    "Msh",
    "build_ack",
    "build_oru_r01",
    "fallback_msh",
    "parse_msh",
    "parse_oru_r01",
]

#: MSH-12 versions read (chapter 7 waveform types are retained for backward compatibility
#: from 2.7 on, and still sent).
SUPPORTED_VERSIONS = frozenset(
    {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}
)
_XML_TYPES = ("XML", "HL7-V3+XML", "X-HL7-AECG+XML", "AECG")


def parse_oru_r01(message: bytes | str) -> tuple[Msh, EcgRecord]:
    """Map an ORU^R01 waveform message to its MSH and `EcgRecord` (see the module docstring).

    Raises only `MappingError` subclasses: `MessageTypeError` (not ORU^R01) or its
    `VersionError`, `SegmentError` (no MSH / no waveform OBX / malformed segment),
    `MissingFieldError` (no control id, no sampling rate, no units), `LeadError` leaves
    (unknown, duplicate, missing lead), `WaveformError` leaves (non-numeric samples, unequal
    lengths, bad rate, non-voltage units, out of range), `DataTypeError` (bad dates),
    `XmlSecurityError` (an ED aECG with a DOCTYPE), `MessageSyntaxError` (anything else).
    """
    try:
        return _parse(message)
    except MappingError:
        raise
    except EcgValidationError as exc:
        cls = SamplingRateError if exc.field == "fs_hz" else WaveformError
        raise cls(str(exc), location="OBX") from exc
    except Exception as exc:
        raise MessageSyntaxError(
            f"malformed message ({type(exc).__name__})", location="MSH"
        ) from exc


def _parse(message: bytes | str) -> tuple[Msh, EcgRecord]:
    segments = split_segments(decode_message(message))
    if not segments:
        raise SegmentError("empty message", location="MSH")
    msh, _ = parse_msh_segment(segments[0])
    if msh.message_type != "ORU^R01":
        raise MessageTypeError(
            f"unsupported message type {msh.message_type[:20]!r}: expected ORU^R01",
            location="MSH[1].9",
        )
    version = msh.version_id.strip()
    if version and version not in SUPPORTED_VERSIONS:
        raise VersionError(
            f"HL7 version {version[:10]!r} is not read (2.3 to 2.8.2)", location="MSH[1].12"
        )
    enc = msh.encoding
    counts: dict[str, int] = {}
    first: dict[str, Fields] = {}
    obxs: list[tuple[int, Fields]] = []
    for line, segment in enumerate(segments[1:], start=2):
        seg_id = check_segment_id(segment, enc.field, line)
        n = counts[seg_id] = counts.get(seg_id, 0) + 1
        if seg_id == "MSH":
            raise SegmentError("more than one MSH: batches are not accepted", location=f"MSH[{n}]")
        if seg_id == "OBX":
            obxs.append((n, segment.split(enc.field)))
        elif seg_id in ("PID", "OBR", "ORC") and seg_id not in first:
            first[seg_id] = segment.split(enc.field)
    del segments

    embedded = _embedded_aecg(obxs, enc)
    patient, sex, birth = _patient(first.get("PID"), enc)
    filler, placer, acquired_at = _order(first.get("OBR"), first.get("ORC"), enc)
    if embedded is not None:
        signals, fs_hz, fs_loc = embedded.signals_mv, embedded.fs_hz, "OBX"
        acquired_at = acquired_at or embedded.acquired_at
        if patient is None and sex is Sex.UNKNOWN and birth is None:
            sex = embedded.demographics.sex
    else:
        signals, fs_hz, fs_loc, wf = read_obx(obxs, enc)
        acquired_at = wf.start or acquired_at
        if acquired_at is None and wf.first_obx is not None:
            k, fields = wf.first_obx
            acquired_at = parse_ts(components(get(fields, 14), enc)[0], location=f"OBX[{k}].14")
    del obxs
    reference_time = acquired_at or parse_ts(msh.message_datetime, location="MSH[1].7")
    age = _age_years(birth, reference_time)
    if embedded is not None and age is None and birth is None:
        age = embedded.demographics.age_years

    identifiers = [("msh10", msh.control_id)]
    facility = components(msh.sending_facility, enc)[0]
    if facility:
        identifiers.append(("sending_facility", facility))
    if filler:
        identifiers.append(("filler", filler))
    if placer:
        identifiers.append(("placer", placer))
    signals.setflags(write=False)
    try:
        record = EcgRecord(
            signals_mv=signals,
            lead_names=LEADS_12,
            fs_hz=fs_hz,
            record_id=filler or msh.control_id,
            acquired_at=acquired_at,
            patient=patient,
            demographics=Demographics(age_years=age, sex=sex),
            identifiers=tuple(identifiers),
        )
    except EcgValidationError as exc:
        if exc.field == "fs_hz":
            raise SamplingRateError(str(exc), location=fs_loc or "OBX") from exc
        raise WaveformError(str(exc), location="OBX") from exc
    return msh, record


def _embedded_aecg(obxs: list[tuple[int, Fields]], enc: Encoding) -> EcgRecord | None:
    """The record of the first ED OBX holding a base64 aECG document, if any."""
    for k, fields in obxs:
        if get(fields, 2).strip().upper() != "ED":
            continue
        parts = get(fields, 5).split(enc.component)
        if len(parts) < 5:
            raise MissingFieldError(
                "ED value needs 5 components (source^type^subtype^encoding^data)",
                location=f"OBX[{k}].5",
            )
        kinds = {unescape(p, enc).strip().upper() for p in parts[1:3]}
        if not any(t in kinds for t in _XML_TYPES):
            continue
        if unescape(parts[3], enc).strip().upper() != "BASE64":
            raise DataTypeError(
                "ED aECG data must be Base64 encoded (ED.4)", location=f"OBX[{k}].5.4"
            )
        try:
            xml = base64.b64decode("".join(parts[4:]).strip(), validate=True)
        except (binascii.Error, ValueError):
            raise DataTypeError("ED data is not valid Base64", location=f"OBX[{k}].5.5") from None
        return record_from_aecg(xml, location_prefix=f"OBX[{k}].5")
    return None


def _patient(pid: Fields | None, enc: Encoding) -> tuple[PatientRef | None, Sex, date | None]:
    if pid is None:
        return None, Sex.UNKNOWN, None
    patient: PatientRef | None = None
    for rep in get(pid, 3).split(enc.repetition):
        comps = rep.split(enc.component)
        value = unescape(comps[0], enc).strip()
        if not value:
            continue
        subs = [
            unescape(s, enc).strip()
            for s in (comps[3] if len(comps) > 3 else "").split(enc.subcomponent)
        ]
        namespace = subs[0]
        uid = subs[1] if len(subs) > 1 else ""
        uid_type = subs[2].upper() if len(subs) > 2 else ""
        if uid:
            system: str | None = f"urn:oid:{uid}" if uid_type == "ISO" else uid
        else:
            system = namespace or None
        patient = PatientRef(system=system, value=value)
        break
    born = parse_ts(components(get(pid, 7), enc)[0], location="PID[1].7")
    sex_code = components(get(pid, 8), enc)[0].upper()
    sex = {"M": Sex.MALE, "F": Sex.FEMALE}.get(sex_code, Sex.UNKNOWN)
    return patient, sex, born.date() if born else None


def _order(
    obr: Fields | None, orc: Fields | None, enc: Encoding
) -> tuple[str, str, datetime | None]:
    placer = filler = ""
    acquired_at = None
    if obr is not None:
        placer = components(get(obr, 2), enc)[0]
        filler = components(get(obr, 3), enc)[0]
        acquired_at = parse_ts(components(get(obr, 7), enc)[0], location="OBR[1].7")
    if orc is not None:
        placer = placer or components(get(orc, 2), enc)[0]
        filler = filler or components(get(orc, 3), enc)[0]
    return filler, placer, acquired_at


def _age_years(born: date | None, at: datetime | None) -> float | None:
    if born is None or at is None:
        return None
    today = at.date()
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    if years < 0 or years > 130:
        raise DataTypeError(
            "birth date gives an age outside 0-130 years at acquisition", location="PID[1].7"
        )
    return float(years)
