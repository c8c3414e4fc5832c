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
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from inference.record import LEADS_12
from mappers.errors import LeadError

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

#: Canonical lead name -> MDC code (MDC_ECG_ELEC_POTL_<lead>), as written by ecgbridge.
MDC_CODES: dict[str, int] = {lead: MDC_ECG_ELEC_POTL + _LEAD_INDEX[lead] for lead in LEADS_12}

#: Canonical lead name -> MDC reference id written next to the code (``MDC_ECG_ELEC_POTL_I``).
MDC_REFIDS: dict[str, str] = {lead: f"MDC_ECG_ELEC_POTL_{lead.upper()}" for lead in LEADS_12}

_BY_UPPER: dict[str, str] = {lead.upper(): lead for lead in LEADS_12}
_BY_CODE: dict[int, str] = {
    **{code: lead for lead, code in MDC_CODES.items()},
    **{MDC_ECG_LEAD + idx: lead for lead, idx in _LEAD_INDEX.items()},
}
_PREFIX = re.compile(r"^(?:MDC_ECG_ELEC_POTL|MDC_ECG_LEAD|LEAD)[ _\-]?", re.IGNORECASE)


def canonical_lead(name: str) -> str:
    """The canonical name (one of `inference.LEADS_12`) of a lead given in any usual spelling.

    Accepts ``I``, ``i``, ``Lead I``, ``LEAD_I``, ``MDC_ECG_LEAD_I``, ``MDC_ECG_ELEC_POTL_I``,
    ``aVR``/``AVR``/``avr``, ``V1``, and MDC numeric codes (``131329``, ``131073``).
    Raises `LeadError` for anything else (``MLII``, ``vx``, ``V7``...).
    """
    text = name.strip()
    if text.isdigit() and len(text) <= 7:
        lead = _BY_CODE.get(int(text))
        if lead is not None:
            return lead
        raise LeadError(f"unknown MDC lead code {text}")
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
