"""EcgRecord -> HL7 v2.5.1 ORU^R01 waveform message (the inverse of `mappers.hl7v2`).

Layout: MSH, PID (when the record has a patient or demographics), OBR (filler order number =
`record_id`, OBR-4 LOINC 11524-6 EKG study, OBR-7 acquisition time), one NM OBX for the
sampling rate (``^MDC_ATTR_SAMP_RATE^MDC``, Hz: the convention `mappers.hl7v2` reads) and 12
NA OBX, one per lead in `inference.LEADS_12` order, OBX-3 ``<MDC code>^MDC_ECG_ELEC_POTL_<lead>
^MDC``, samples in `units` with the fewest decimals that reproduce the float32 samples (integer
microvolts for PTB-XL).

PID-7 is not a real birth date: ecgbridge keeps only an age. It is approximated as the
acquisition date (or `now`) minus the age in whole years, which reads back to the same age.
A patient known only by a FHIR reference is sent as PID-3 = that reference, without an
assigning authority.
"""

from __future__ import annotations

from datetime import date, datetime

from inference.record import EcgRecord, Sex
from mappers.hl7v2_wire import STANDARD, escape, format_date, format_ts
from mappers.leads import MDC_CODES, MDC_REFIDS
from mappers.sample_codec import format_samples, voltage_unit

_SEX_CODES = {Sex.MALE: "M", Sex.FEMALE: "F", Sex.UNKNOWN: "U"}


def _assigning_authority(system: str | None) -> str:
    """A FHIR identifier system -> HL7 HD (namespace&universal id&type), escaped."""
    if not system:
        return ""
    sub = STANDARD.subcomponent
    if system.startswith("urn:oid:"):
        return f"{sub}{escape(system[8:])}{sub}ISO"
    if "://" in system or system.startswith("urn:"):
        return f"{sub}{escape(system)}{sub}URI"
    return escape(system)


def _approximate_birth_date(age_years: float, at: date) -> date:
    years = int(age_years)
    try:
        return at.replace(year=at.year - years)
    except ValueError:  # 29 February
        return at.replace(year=at.year - years, day=28)


def oru_msh(
    *,
    control_id: str,
    now: datetime,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
) -> str:
    """The MSH of an HL7 v2.5.1 ORU^R01 (production processing id, standard delimiters)."""
    return "|".join(
        [
            "MSH",
            "^~\\&",
            escape(sending_application),
            escape(sending_facility),
            escape(receiving_application),
            escape(receiving_facility),
            format_ts(now),
            "",
            "ORU^R01^ORU_R01",
            escape(control_id),
            "P",
            "2.5.1",
        ]
    )


def build_oru_r01(
    record: EcgRecord,
    *,
    control_id: str,
    sending_application: str = "ECGCART",
    sending_facility: str = "WARD",
    now: datetime,
    units: str = "uV",
    receiving_application: str = "ECGBRIDGE",
    receiving_facility: str = "",
) -> bytes:
    """A waveform ORU^R01 carrying `record` (see the module docstring). Segments joined by CR."""
    unit = voltage_unit(units)
    if unit is None:
        raise ValueError(f"units must be uV, mV or V, got {units!r}")
    msh = oru_msh(
        control_id=control_id,
        now=now,
        sending_application=sending_application,
        sending_facility=sending_facility,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
    )
    segments = [msh]
    demo = record.demographics
    if record.patient is not None or demo.age_years is not None or demo.sex is not Sex.UNKNOWN:
        pid3 = ""
        if record.patient is not None:
            value = record.patient.value or record.patient.reference or ""
            system = record.patient.system if record.patient.value else None
            pid3 = f"{escape(value)}^^^{_assigning_authority(system)}^MR"
        birth = ""
        if demo.age_years is not None:
            at = (record.acquired_at or now).date()
            birth = format_date(_approximate_birth_date(demo.age_years, at))
        segments.append("|".join(["PID", "1", "", pid3, "", "", "", birth, _SEX_CODES[demo.sex]]))
    placer = record.identifier("placer") or ""
    acquired = format_ts(record.acquired_at) if record.acquired_at else ""
    segments.append(
        "|".join(
            [
                "OBR",
                "1",
                escape(placer),
                escape(record.record_id),
                "11524-6^EKG study^LN",
                "",
                "",
                acquired,
            ]
        )
    )
    segments.append(f"OBX|1|NM|^MDC_ATTR_SAMP_RATE^MDC||{record.fs_hz:.12g}|Hz^Hz^UCUM|||||F")
    for i, lead in enumerate(record.lead_names, start=2):
        samples = format_samples(record.lead(lead), unit, "^")
        ident = f"{MDC_CODES[lead]}^{MDC_REFIDS[lead]}^MDC" if lead in MDC_CODES else escape(lead)
        segments.append(f"OBX|{i}|NA|{ident}||{samples}|{unit}^{unit}^UCUM|||||F|||{acquired}")
    return "\r".join(segments).encode("utf-8")
