"""HL7 v3 annotated ECG (FDA aECG, HL7 AnnotatedECG R1) XML -> EcgRecord, XXE-safe.

Parsed with defusedxml; a DOCTYPE, entity declaration or external reference is refused
before anything is read (`XmlSecurityError`). What is read:

* ``AnnotatedECG/id`` (root + extension) -> `record_id` (``urn:oid:<root>|<extension>``);
  ``effectiveTime/low`` -> `acquired_at` (the series' own time wins).
* ``.../trialSubject/id`` -> `PatientRef`; ``subjectDemographicPerson`` gender code
  (``M``/``F``) and ``birthTime`` -> sex and age in whole years.
* The first top-level ``component/series`` (RHYTHM preferred) and its ``sequenceSet``: the
  ``TIME_ABSOLUTE``/``TIME_RELATIVE`` sequence gives the sampling interval
  (``increment``, ``s``/``ms``); each lead sequence (``MDC_ECG_LEAD_I`` ...) is an SLIST_PQ:
  sample = ``origin + scale * digit`` in the units of ``scale`` (and ``origin``).

Locations are simple paths (``AnnotatedECG/series/sequence[3]/digits``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from defusedxml import DefusedXmlException

from inference.errors import EcgValidationError
from inference.record import LEADS_12, Demographics, EcgRecord, PatientRef, Sex
from mappers.errors import (
    DataTypeError,
    MappingError,
    MessageSyntaxError,
    MissingFieldError,
    NonFiniteSampleError,
    SamplingRateError,
    UnitError,
    WaveformError,
    XmlSecurityError,
)
from mappers.hl7v2_wire import parse_ts
from mappers.leads import assemble_12, lead_of_any
from mappers.sample_codec import parse_decimals, scale_values, to_millivolts, voltage_unit

NS = "urn:hl7-org:v3"
_Q = "{" + NS + "}"
_S_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def _q(path: str) -> str:
    return "/".join(_Q + part if part and part[0].isalpha() else part for part in path.split("/"))


def record_from_aecg(xml: bytes | str, *, location_prefix: str = "AnnotatedECG") -> EcgRecord:
    """An aECG document -> `EcgRecord`. Raises `XmlSecurityError`, `MessageSyntaxError` (not
    well-formed, not an AnnotatedECG), and the waveform/lead errors of `mappers.errors`."""
    try:
        return _parse(xml, location_prefix)
    except MappingError:
        raise
    except EcgValidationError as exc:
        cls = SamplingRateError if exc.field == "fs_hz" else WaveformError
        raise cls(str(exc), location=location_prefix) from exc
    except Exception as exc:
        raise MessageSyntaxError(
            f"malformed aECG document ({type(exc).__name__})", location=location_prefix
        ) from exc


def _root(xml: bytes | str, loc: str) -> Element:
    head = xml[:4096].upper() if isinstance(xml, bytes) else xml[:4096].upper().encode()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
        raise XmlSecurityError("XML with a DOCTYPE or entity declaration is refused", location=loc)
    try:
        root: Element = SafeET.fromstring(xml, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise XmlSecurityError(
            f"XML refused: {type(exc).__name__} (DOCTYPE, entities, external references)",
            location=loc,
        ) from None
    except ParseError as exc:
        raise MessageSyntaxError(f"XML is not well-formed: {exc}", location=loc) from None
    if root.tag != _Q + "AnnotatedECG":
        raise MessageSyntaxError(
            f"root element is {root.tag[-40:]!r}, expected AnnotatedECG in {NS}", location=loc
        )
    return root


def _time(el: Element | None, loc: str) -> datetime | None:
    if el is None or not el.get("value"):
        return None
    return parse_ts(str(el.get("value")), location=loc)


def _parse(xml: bytes | str, loc: str) -> EcgRecord:
    root = _root(xml, loc)
    series = [s for s in root.iterfind(_q("component/series"))]
    if not series:
        raise MissingFieldError("aECG has no component/series", location=f"{loc}/series")
    rhythm = [
        s
        for s in series
        if (
            s.find(_q("code")) is not None
            and "RHYTHM"
            in str(
                s.find(_q("code")).get("code", "")  # type: ignore[union-attr]
            )
        )
    ]
    chosen = (rhythm or series)[0]
    sloc = f"{loc}/series"
    fs_hz, leads, locations, unknown = _sequences(chosen, sloc)
    signals = assemble_12(leads, locations=locations, unknown=unknown, where=sloc)
    acquired = _time(chosen.find(_q("effectiveTime/low")), f"{sloc}/effectiveTime") or _time(
        root.find(_q("effectiveTime/low")), f"{loc}/effectiveTime"
    )
    ident = root.find(_q("id"))
    root_id = ident.get("root", "") if ident is not None else ""
    ext = ident.get("extension", "") if ident is not None else ""
    if not root_id and not ext:
        raise MissingFieldError("AnnotatedECG/id has no root", location=f"{loc}/id")
    record_id = f"urn:oid:{root_id}|{ext}" if root_id and ext else (root_id or ext)
    patient, demographics = _subject(root, acquired, loc)
    signals.setflags(write=False)
    return EcgRecord(
        signals_mv=signals,
        lead_names=LEADS_12,
        fs_hz=fs_hz,
        record_id=record_id,
        acquired_at=acquired,
        patient=patient,
        demographics=demographics,
        identifiers=(("aecg", record_id),),
    )


def _sequences(
    series: Element, sloc: str
) -> tuple[float, dict[str, npt.NDArray[np.float32]], dict[str, str], list[str]]:
    fs_hz: float | None = None
    leads: dict[str, npt.NDArray[np.float32]] = {}
    locations: dict[str, str] = {}
    unknown: list[str] = []
    seqs = series.findall(_q("component/sequenceSet/component/sequence"))
    for i, seq in enumerate(seqs, start=1):
        where = f"{sloc}/sequence[{i}]"
        code_el = seq.find(_q("code"))
        code = code_el.get("code", "") if code_el is not None else ""
        value = seq.find(_q("value"))
        if value is None:
            raise MissingFieldError("sequence has no value", location=f"{where}/value")
        if code.startswith("TIME_"):
            inc = value.find(_q("increment"))
            if inc is None:
                raise MissingFieldError("time sequence has no increment", location=where)
            unit = str(inc.get("unit", "s"))
            try:
                step = float(str(inc.get("value"))) * _S_PER_UNIT[unit]
            except (KeyError, ValueError):
                raise SamplingRateError(
                    "increment is not a time in s, ms or us", location=f"{where}/increment"
                ) from None
            if not (np.isfinite(step) and step > 0):
                raise SamplingRateError("increment must be positive", location=f"{where}/increment")
            fs_hz = 1.0 / step
            if abs(fs_hz - round(fs_hz)) < 1e-6:
                fs_hz = float(round(fs_hz))
            continue
        lead = lead_of_any([code, code_el.get("displayName") if code_el is not None else None])
        if lead is None:
            unknown.append(f"{where}/code")
            continue
        if lead in leads:
            from mappers.errors import DuplicateLeadError

            raise DuplicateLeadError(
                f"lead {lead} sent twice (first in {locations[lead]})", location=f"{where}/code"
            )
        leads[lead] = _slist(value, where)
        locations[lead] = f"{where}/value/digits"
    if fs_hz is None:
        raise MissingFieldError(
            "no TIME_ABSOLUTE/TIME_RELATIVE sequence with an increment", location=sloc
        )
    return fs_hz, leads, locations, unknown


def _slist(value: Element, where: str) -> npt.NDArray[np.float32]:
    scale = value.find(_q("scale"))
    origin = value.find(_q("origin"))
    digits = value.find(_q("digits"))
    if digits is None or not (digits.text or "").strip():
        raise MissingFieldError("lead sequence has no digits", location=f"{where}/value/digits")
    unit_text = str((scale.get("unit") if scale is not None else None) or "uV")
    unit = voltage_unit(unit_text)
    if unit is None:
        raise UnitError(
            f"unit {unit_text[:20]!r} is not a voltage", location=f"{where}/value/scale"
        )
    try:
        values = parse_decimals(digits.text or "", None)
    except ValueError:
        raise NonFiniteSampleError(
            "digits are not all finite numbers", location=f"{where}/value/digits"
        ) from None
    values = scale_values(values, str(scale.get("value", "1")) if scale is not None else "1")
    if origin is not None and origin.get("value") not in (None, "0", "0.0"):
        o_unit = voltage_unit(str(origin.get("unit") or unit_text))
        if o_unit is None:
            raise UnitError("origin unit is not a voltage", location=f"{where}/value/origin")
        try:
            o_mv = float(to_millivolts(np.array([float(str(origin.get("value")))]), o_unit)[0])
        except ValueError:
            raise DataTypeError(
                "origin is not a number", location=f"{where}/value/origin"
            ) from None
        return (to_millivolts(values, unit) + np.float32(o_mv)).astype(np.float32)
    return to_millivolts(values, unit)


def _subject(
    root: Element, at: datetime | None, loc: str
) -> tuple[PatientRef | None, Demographics]:
    subject = None
    for el in root.iter(_Q + "trialSubject"):
        subject = el
        break
    if subject is None:
        return None, Demographics()
    patient = None
    ident = subject.find(_q("id"))
    if ident is not None and (ident.get("extension") or ident.get("root")):
        root_id, ext = ident.get("root", ""), ident.get("extension", "")
        patient = PatientRef(
            system=f"urn:oid:{root_id}" if root_id and ext else None, value=ext or root_id
        )
    person = subject.find(_q("subjectDemographicPerson"))
    sex, age = Sex.UNKNOWN, None
    if person is not None:
        gender = person.find(_q("administrativeGenderCode"))
        code = (gender.get("code", "") if gender is not None else "").upper()
        sex = {"M": Sex.MALE, "F": Sex.FEMALE}.get(code, Sex.UNKNOWN)
        born = _time(person.find(_q("birthTime")), f"{loc}/subjectDemographicPerson/birthTime")
        if born is not None and at is not None:
            b, t = born.date(), at.astimezone(UTC).date()
            years = t.year - b.year - ((t.month, t.day) < (b.month, b.day))
            if not 0 <= years <= 130:
                raise DataTypeError(
                    "birthTime gives an age outside 0-130 years",
                    location=f"{loc}/subjectDemographicPerson/birthTime",
                )
            age = float(years)
    return patient, Demographics(age_years=age, sex=sex)
