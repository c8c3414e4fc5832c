"""ECG lead names: the many spellings senders use -> ecgbridge's canonical 12 leads.

Codes follow ISO/IEEE 11073-10101 (MDC nomenclature), partition 2 (SCADA), as used by the
FHIR R4 core ECG example (``Observation/ekg``) and HL7 v2 waveform OBX-3:

* ``MDC_ECG_ELEC_POTL_<lead>`` = 131328 + lead index (I = 131329, II = 131330, V1-V6 =
  131331-131336, III = 131389, aVR = 131390, aVL = 131391, aVF = 131392). These are the
  codes ecgbridge writes (`MDC_CODES`).
* ``MDC_ECG_LEAD_<lead>`` = 131072 + the same lead index (I = 131073, III = 131133, ...), the
  lead-designation codes some senders use instead. Accepted on input.

Lead index per IEEE 11073-10102 (annotated ECG): I = 1, II = 2, V1..V6 = 3..8, III = 61,
aVR = 62, aVL = 63, aVF = 64.

Also accepted on input, for senders that code leads outside MDC: the LOINC lead parts
(``LP7386-8`` Lead I ... ``LP7394-2`` Lead V6) and the SNOMED CT lead concepts (``272729005``
Lead I, ``257475007`` lead site V1, ...), as listed in the HL7 Germany base profiles'
``EkgLeads`` / ``EkgAbleitungenVS`` value sets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from inference.record import LEADS_12
from mappers.errors import (
    LeadError,
    LengthMismatchError,
    MissingLeadError,
    NonFiniteSampleError,
    SampleRangeError,
    UnknownLeadError,
)
from mappers.sample_codec import MAX_ABS_MV, out_of_range_peak

#: Base code of MDC_ECG_ELEC_POTL (electric potential of a lead); lead codes are base + index.
MDC_ECG_ELEC_POTL = 131328
#: Base code of the MDC_ECG_LEAD lead designations.
MDC_ECG_LEAD = 131072

_LEAD_INDEX: dict[str, int] = {
    "I": 1,
    "II": 2,
    "V1": 3,
    "V2": 4,
    "V3": 5,
    "V4": 6,
    "V5": 7,
    "V6": 8,
    "III": 61,
    "aVR": 62,
    "aVL": 63,
    "aVF": 64,
}

#: Canonical lead name -> its MDC lead index (the offset every per-lead MDC code adds).
MDC_LEAD_INDEX: dict[str, int] = dict(_LEAD_INDEX)

#: Canonical lead name -> MDC code (MDC_ECG_ELEC_POTL_<lead>), as written by ecgbridge.
MDC_CODES: dict[str, int] = {lead: MDC_ECG_ELEC_POTL + _LEAD_INDEX[lead] for lead in LEADS_12}

#: Canonical lead name -> MDC reference id written next to the code (``MDC_ECG_ELEC_POTL_I``).
MDC_REFIDS: dict[str, str] = {lead: f"MDC_ECG_ELEC_POTL_{lead.upper()}" for lead in LEADS_12}

_BY_UPPER: dict[str, str] = {lead.upper(): lead for lead in LEADS_12}
_BY_CODE: dict[int, str] = {
    **{code: lead for lead, code in MDC_CODES.items()},
    **{MDC_ECG_LEAD + idx: lead for lead, idx in _LEAD_INDEX.items()},
}
#: LOINC lead part codes -> canonical lead.
LOINC_LEAD_PARTS: dict[str, str] = {
    "LP7386-8": "I",
    "LP7387-6": "II",
    "LP7388-4": "III",
    "LP7385-0": "aVR",
    "LP7384-3": "aVL",
    "LP7383-5": "aVF",
    "LP7389-2": "V1",
    "LP7390-0": "V2",
    "LP7391-8": "V3",
    "LP7392-6": "V4",
    "LP7393-4": "V5",
    "LP7394-2": "V6",
}
#: SNOMED CT lead concepts -> canonical lead.
SNOMED_LEADS: dict[int, str] = {
    272729005: "I",
    272730000: "II",
    272731001: "III",
    257474006: "aVR",
    257473000: "aVL",
    257472005: "aVF",
    257475007: "V1",
    257476008: "V2",
    257477004: "V3",
    257478009: "V4",
    257479001: "V5",
    257480003: "V6",
}
_PREFIX = re.compile(r"^(?:MDC_ECG_ELEC_POTL|MDC_ECG_LEAD|LEAD)[ _\-]?", re.IGNORECASE)


def lead_of_any(texts: Sequence[str | None]) -> str | None:
    """The canonical lead named by the first of `texts` that names one, else None."""
    for text in texts:
        if text:
            try:
                return canonical_lead(str(text))
            except LeadError:
                continue
    return None


def canonical_lead(name: str) -> str:
    """The canonical name (one of `inference.LEADS_12`) of a lead given in any usual spelling.

    Accepts ``I``, ``i``, ``Lead I``, ``LEAD_I``, ``MDC_ECG_LEAD_I``, ``MDC_ECG_ELEC_POTL_I``,
    ``aVR``/``AVR``/``avr``, ``V1``, MDC numeric codes (``131329``, ``131073``), LOINC lead
    parts (``LP7386-8``) and SNOMED CT lead concepts (``272729005``).
    Raises `LeadError` for anything else (``MLII``, ``vx``, ``V7``...).
    """
    text = name.strip()
    if text.isdigit() and len(text) <= 7:
        lead = _BY_CODE.get(int(text))
        if lead is not None:
            return lead
        raise LeadError(f"unknown MDC lead code {text}")
    if text.isdigit() and len(text) <= 18:
        lead = SNOMED_LEADS.get(int(text))
        if lead is not None:
            return lead
        raise LeadError(f"unknown lead code {text}")
    lead = LOINC_LEAD_PARTS.get(text.upper())
    if lead is not None:
        return lead
    key = _PREFIX.sub("", text).strip().upper()
    lead = _BY_UPPER.get(key)
    if lead is None:
        raise LeadError(f"unknown lead {text[:40]!r}")
    return lead


def is_standard_lead(name: str) -> bool:
    """True when `canonical_lead` accepts `name`."""
    try:
        canonical_lead(name)
    except LeadError:
        return False
    return True


def derive_limb_leads(
    leads_mv: Mapping[str, npt.NDArray[np.float32]],
) -> dict[str, npt.NDArray[np.float32]]:
    """Add the derived limb leads (III, aVR, aVL, aVF) from I and II (Einthoven/Goldberger).

    `leads_mv` is keyed by canonical name and must hold I and II; leads already present are
    kept as sent. Returns a new dict; the input is not modified.
    """
    try:
        lead_i = np.asarray(leads_mv["I"], dtype=np.float32)
        lead_ii = np.asarray(leads_mv["II"], dtype=np.float32)
    except KeyError as exc:
        raise LeadError(f"cannot derive limb leads without lead {exc.args[0]}") from None
    if lead_i.shape != lead_ii.shape:
        raise LeadError("leads I and II have different lengths")
    derived: dict[str, npt.NDArray[np.float32]] = {
        "III": lead_ii - lead_i,
        "aVR": -(lead_i + lead_ii) / np.float32(2.0),
        "aVL": lead_i - lead_ii / np.float32(2.0),
        "aVF": lead_ii - lead_i / np.float32(2.0),
    }
    out = dict(leads_mv)
    for name, values in derived.items():
        out.setdefault(name, values.astype(np.float32))
    return out


_LIMB_DERIVED = ("III", "aVR", "aVL", "aVF")


def assemble_12(
    leads_mv: Mapping[str, npt.NDArray[np.float32]],
    *,
    locations: Mapping[str, str],
    unknown: Sequence[str] = (),
    where: str,
) -> npt.NDArray[np.float32]:
    """The 12 standard leads as one (12, n) float32 mV array, in `inference.LEADS_12` order.

    `leads_mv` maps canonical names to samples, `locations` each lead to where it was sent
    (for errors), `unknown` the locations of channels whose lead was not recognised, `where`
    the location of the waveform as a whole. When only I and II of the limb leads are sent,
    III, aVR, aVL and aVF are derived (`derive_limb_leads`). Raises `MissingLeadError` /
    `UnknownLeadError` (a lead missing; unknown when unrecognised channels were sent),
    `LengthMismatchError`, `NonFiniteSampleError` or `SampleRangeError`.
    """
    leads = dict(leads_mv)
    if all(name in leads for name in ("I", "II")) and not any(n in leads for n in _LIMB_DERIVED):
        _check_lengths(leads, locations, ("I", "II"))
        leads = derive_limb_leads(leads)
    missing = [lead for lead in LEADS_12 if lead not in leads]
    if missing:
        if unknown:
            raise UnknownLeadError(
                f"missing leads {', '.join(missing)}; unrecognised leads at "
                f"{', '.join(unknown[:6])}",
                location=unknown[0],
            )
        raise MissingLeadError(f"missing leads {', '.join(missing)}", location=where)
    _check_lengths(leads, locations, LEADS_12)
    for lead in LEADS_12:
        values = leads[lead]
        loc = locations.get(lead, where)
        if not np.isfinite(values).all():
            raise NonFiniteSampleError(f"lead {lead} has NaN or infinite samples", location=loc)
        peak = out_of_range_peak(values)
        if peak is not None:
            raise SampleRangeError(
                f"lead {lead} peaks at {peak:.1f} mV, beyond the 16-bit microvolt range "
                f"(+-{MAX_ABS_MV:g} mV): wrong gain or units",
                location=loc,
            )
    return np.stack([np.asarray(leads[lead], dtype=np.float32) for lead in LEADS_12])


def _check_lengths(
    leads: Mapping[str, npt.NDArray[np.float32]],
    locations: Mapping[str, str],
    names: Sequence[str],
) -> None:
    ref = names[0]
    n_ref = leads[ref].shape
    for lead in names[1:]:
        if leads[lead].shape != n_ref:
            raise LengthMismatchError(
                f"lead {lead} has {leads[lead].size} samples but lead {ref} "
                f"({locations.get(ref, ref)}) has {leads[ref].size}",
                location=locations.get(lead, lead),
            )
