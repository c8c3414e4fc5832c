"""HL7 v2.3-2.8 order priority of an ORU^R01: is this ECG STAT?

Read, first found wins: TQ1-9 (priority, v2.5+), OBR-27 component 6 (quantity/timing
priority, up to v2.4), OBR-5 (priority, retained for backward compatibility), ORC-7
component 6. HL7 table 0027: ``S`` = STAT, ``A`` = ASAP, ``R`` = routine, ``P`` = pre-op,
``C`` = callback, ``T`` = timing critical.
"""

from __future__ import annotations

from enum import StrEnum

from mappers.hl7v2_wire import decode_message, split_segments


class Priority(StrEnum):
    STAT = "stat"
    ASAP = "asap"
    ROUTINE = "routine"


_CODES = {"S": Priority.STAT, "STAT": Priority.STAT, "A": Priority.ASAP, "ASAP": Priority.ASAP}


def _field(fields: list[str], n: int) -> str:
    return fields[n] if len(fields) > n else ""


def order_priority(message: bytes | str) -> Priority:
    """The message's order priority (ROUTINE when none is sent or it cannot be read)."""
    text = decode_message(message)
    if len(text) < 8 or not text.startswith("MSH"):
        return Priority.ROUTINE
    fsep, csep = text[3], text[4]
    candidates: list[str] = []
    for seg in split_segments(text):
        fields = seg.split(fsep)
        kind = fields[0]
        if kind == "TQ1":
            candidates.append(_field(fields, 9).split(csep)[0])
        elif kind == "OBR":
            timing = _field(fields, 27).split(csep)
            candidates.append(timing[5] if len(timing) > 5 else "")
            candidates.append(_field(fields, 5).split(csep)[0])
        elif kind == "ORC":
            timing = _field(fields, 7).split(csep)
            candidates.append(timing[5] if len(timing) > 5 else "")
    for code in candidates:
        found = _CODES.get(code.strip().upper())
        if found is not None:
            return found
    return Priority.ROUTINE
