"""HL7 v2.5.1 ORU^R01 waveform (OBX value type NA, one lead per OBX) -> EcgRecord; ACKs.

Inbound parsing is a fast path (split + numpy), not hl7apy, which needs seconds per
12-lead message. What is read:

* MSH: delimiters from MSH-1/MSH-2, MSH-9 must be ``ORU^R01``, MSH-10 control id.
* PID (optional): PID-3 first identifier with a value -> `PatientRef` (system from the
  assigning authority PID-3.4: ``urn:oid:<uid>`` for ISO, the universal id for URI/other
  types, else the namespace id); PID-7 birth date + acquisition time -> age in full years;
  PID-8 ``M``/``F`` -> `Sex` (anything else is unknown).
* OBR (optional): OBR-3 filler / OBR-2 placer order number, OBR-7 observation date/time ->
  `acquired_at` (timezone-aware; UTC when no offset is sent; OBX-14 of the first waveform
  OBX when OBR-7 is empty).
* OBX value type ``NA``: one lead per OBX. OBX-3 names the lead by any component (MDC code
  ``131329^MDC_ECG_ELEC_POTL_I^MDC``, ``MDC_ECG_LEAD_I``, plain ``I``); OBX-5 the samples,
  component-separated; OBX-6 the units, ``uV``/``mV``/``V`` (first or second component, e.g.
  ``uV^uV^UCUM``; MDC ``MDC_DIM_MICRO_VOLT``/``MDC_DIM_MILLI_VOLT`` also accepted). NA OBX
  whose lead is not one of the 12 standard leads are skipped (15-lead carts send Frank
  leads); a missing standard lead is then reported together with the unrecognised OBX.

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

from datetime import date, datetime

import numpy as np
import numpy.typing as npt

from inference.errors import EcgValidationError
from inference.record import LEADS_12, Demographics, EcgRecord, PatientRef, Sex
from mappers.errors import (
    DataTypeError,
    LeadError,
    MappingError,
    MessageSyntaxError,
    MessageTypeError,
    MissingFieldError,
    SegmentError,
    WaveformError,
)
from mappers.hl7v2_ack import build_ack
from mappers.hl7v2_oru_out import build_oru_r01
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
from mappers.leads import canonical_lead
from mappers.sample_codec import parse_decimals, to_millivolts, voltage_unit

__all__ = [
    "Msh",
    "build_ack",
    "build_oru_r01",
    "fallback_msh",
    "parse_msh",
    "parse_oru_r01",
]

_RATE_KEYS = ("MDC_ATTR_SAMP_RATE", "SAMPLING_FREQUENCY", "SAMPLE_RATE", "SAMPLING FREQUENCY")
_PERIOD_KEYS = ("MDC_ATTR_TIME_PD_SAMP", "SAMPLING_INTERVAL", "SAMPLE_INTERVAL")
_HZ_PER_UNIT = {"hz": 1.0, "": 1.0, "/s": 1.0, "1/s": 1.0, "khz": 1000.0}
_S_PER_UNIT = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "µs": 1e-6}
_MDC_VOLT_UNITS = {
    "MDC_DIM_MICRO_VOLT": "uV",
    "MDC_DIM_MILLI_VOLT": "mV",
    "MDC_DIM_VOLT": "V",
}

Fields = list[str]


def parse_oru_r01(message: bytes | str) -> tuple[Msh, EcgRecord]:
    """Map an ORU^R01 waveform message to its MSH and `EcgRecord` (see the module docstring).

    Raises only `MappingError` subclasses: `MessageTypeError` (not ORU^R01), `SegmentError`
    (no MSH / no waveform OBX / malformed segment), `MissingFieldError` (no control id, no
    sampling rate, no units), `LeadError` (missing or duplicate lead), `WaveformError`
    (non-numeric samples, unequal lengths, non-voltage units, domain validation),
    `DataTypeError` (bad dates), `MessageSyntaxError` (anything unanticipated).
    """
    try:
        return _parse(message)
    except MappingError:
        raise
    except EcgValidationError as exc:
        raise WaveformError(str(exc), location="OBX") from exc
    except Exception as exc:
        raise MessageSyntaxError(
            f"malformed message ({type(exc).__name__})", location="MSH"
        ) from exc


def _get(fields: Fields, n: int) -> str:
    return fields[n] if n < len(fields) else ""


def _components(value: str, enc: Encoding) -> list[str]:
    return [unescape(c, enc).strip() for c in value.split(enc.repetition)[0].split(enc.component)]


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
    enc = msh.encoding
    counts: dict[str, int] = {}
    pid: Fields | None = None
    obr: Fields | None = None
    obxs: list[tuple[int, Fields]] = []
    for line, segment in enumerate(segments[1:], start=2):
        seg_id = check_segment_id(segment, enc.field, line)
        n = counts[seg_id] = counts.get(seg_id, 0) + 1
        if seg_id == "MSH":
            raise SegmentError("more than one MSH: batches are not accepted", location=f"MSH[{n}]")
        if seg_id == "PID" and pid is None:
            pid = segment.split(enc.field)
        elif seg_id == "OBR" and obr is None:
            obr = segment.split(enc.field)
        elif seg_id == "OBX":
            obxs.append((n, segment.split(enc.field)))

    signals, fs_hz, fs_loc, first_obx = _waveform(obxs, enc)
    patient, sex, birth = _patient(pid, enc)
    filler, placer, acquired_at = _order(obr, enc)
    if acquired_at is None and first_obx is not None:
        acquired_at = parse_ts(
            _components(_get(first_obx[1], 14), enc)[0], location=f"OBX[{first_obx[0]}].14"
        )
    reference_time = acquired_at or parse_ts(msh.message_datetime, location="MSH[1].7")
    age = _age_years(birth, reference_time)

    identifiers = [("msh10", msh.control_id)]
    facility = _components(msh.sending_facility, enc)[0]
    if facility:
        identifiers.append(("sending_facility", facility))
    if filler:
        identifiers.append(("filler", filler))
    if placer:
        identifiers.append(("placer", placer))
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
        raise WaveformError(str(exc), location=fs_loc if exc.field == "fs_hz" else "OBX") from exc
    return msh, record


def _lead_of(identifier: str, enc: Encoding) -> str | None:
    for comp in identifier.split(enc.repetition)[0].split(enc.component):
        text = unescape(comp, enc).strip()
        if not text:
            continue
        try:
            return canonical_lead(text)
        except LeadError:
            continue
    return None


def _voltage_unit(units: str, loc: str, enc: Encoding) -> str:
    comps = [c for c in _components(units, enc) if c]
    if not comps:
        raise MissingFieldError("waveform units (OBX-6) are empty", location=f"{loc}.6")
    for comp in comps[:2]:
        unit = voltage_unit(comp) or _MDC_VOLT_UNITS.get(comp.upper())
        if unit is not None:
            return unit
    raise WaveformError(
        f"units {comps[0][:20]!r} are not a voltage (uV, mV, V)", location=f"{loc}.6"
    )


def _rate_hz(fields: Fields, loc: str, enc: Encoding) -> float | None:
    ident = _get(fields, 3).upper()
    is_rate = any(key in ident for key in _RATE_KEYS)
    is_period = not is_rate and any(key in ident for key in _PERIOD_KEYS)
    if not (is_rate or is_period):
        return None
    try:
        value = float(unescape(_get(fields, 5), enc).strip())
    except ValueError:
        raise WaveformError("sampling rate is not a number", location=f"{loc}.5") from None
    if not (np.isfinite(value) and value > 0):
        raise WaveformError("sampling rate must be a positive number", location=f"{loc}.5")
    unit = _components(_get(fields, 6), enc)[0].lower()
    if is_rate:
        if unit not in _HZ_PER_UNIT:
            raise WaveformError(f"sampling rate unit {unit[:10]!r} is not Hz", location=f"{loc}.6")
        return value * _HZ_PER_UNIT[unit]
    if unit not in _S_PER_UNIT:
        raise WaveformError(
            f"sampling interval unit {unit[:10]!r} is not ms, s or us", location=f"{loc}.6"
        )
    return 1.0 / (value * _S_PER_UNIT[unit])


def _waveform(
    obxs: list[tuple[int, Fields]], enc: Encoding
) -> tuple[npt.NDArray[np.float32], float, str, tuple[int, Fields] | None]:
    fs_hz: float | None = None
    fs_loc = ""
    leads: dict[str, tuple[int, npt.NDArray[np.float32]]] = {}
    unknown: list[str] = []
    first: tuple[int, Fields] | None = None
    for k, fields in obxs:
        loc = f"OBX[{k}]"
        value_type = _get(fields, 2).strip().upper()
        if value_type == "NA":
            first = first or (k, fields)
            lead = _lead_of(_get(fields, 3), enc)
            if lead is None:
                unknown.append(f"{loc}.3")
                continue
            if lead in leads:
                raise LeadError(
                    f"lead {lead} sent twice (first in OBX[{leads[lead][0]}])", location=f"{loc}.3"
                )
            unit = _voltage_unit(_get(fields, 6), loc, enc)
            try:
                values = parse_decimals(_get(fields, 5), enc.component)
            except ValueError:
                raise WaveformError(
                    f"lead {lead}: samples are not all finite numbers", location=f"{loc}.5"
                ) from None
            leads[lead] = (k, to_millivolts(values, unit))
        elif value_type == "NM":
            rate = _rate_hz(fields, loc, enc)
            if rate is None:
                continue
            if fs_hz is not None and not np.isclose(rate, fs_hz):
                raise WaveformError(
                    f"sampling rate {rate:g} Hz contradicts {fs_hz:g} Hz in {fs_loc}",
                    location=f"{loc}.5",
                )
            fs_hz, fs_loc = rate, f"{loc}.5"
    if not leads and not unknown:
        raise SegmentError("no waveform OBX (value type NA)", location="OBX")
    missing = [lead for lead in LEADS_12 if lead not in leads]
    if missing:
        detail = f"; unrecognised leads at {', '.join(unknown[:6])}" if unknown else ""
        raise LeadError(
            f"missing leads {', '.join(missing)}{detail}",
            location=unknown[0] if unknown else "OBX",
        )
    if fs_hz is None:
        raise MissingFieldError(
            "no sampling rate: send an NM OBX coded MDC_ATTR_SAMP_RATE in Hz", location="OBX"
        )
    k_ref, ref = leads[LEADS_12[0]]
    for lead in LEADS_12[1:]:
        k, lead_mv = leads[lead]
        if lead_mv.shape != ref.shape:
            raise WaveformError(
                f"lead {lead} has {lead_mv.size} samples but lead I (OBX[{k_ref}]) has {ref.size}",
                location=f"OBX[{k}].5",
            )
    signals = np.stack([leads[lead][1] for lead in LEADS_12]).astype(np.float32, copy=False)
    return signals, fs_hz, fs_loc, first


def _patient(pid: Fields | None, enc: Encoding) -> tuple[PatientRef | None, Sex, date | None]:
    if pid is None:
        return None, Sex.UNKNOWN, None
    patient: PatientRef | None = None
    for rep in _get(pid, 3).split(enc.repetition):
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
    born = parse_ts(_components(_get(pid, 7), enc)[0], location="PID[1].7")
    sex_code = _components(_get(pid, 8), enc)[0].upper()
    sex = {"M": Sex.MALE, "F": Sex.FEMALE}.get(sex_code, Sex.UNKNOWN)
    return patient, sex, born.date() if born else None


def _order(obr: Fields | None, enc: Encoding) -> tuple[str, str, datetime | None]:
    if obr is None:
        return "", "", None
    placer = _components(_get(obr, 2), enc)[0]
    filler = _components(_get(obr, 3), enc)[0]
    acquired_at = parse_ts(_components(_get(obr, 7), enc)[0], location="OBR[1].7")
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
