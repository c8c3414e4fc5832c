"""HL7 v2.5.1 acknowledgments (chapter 2.9): ACK with MSH, MSA and ERR.

MSA-1 codes follow HL7 table 0008 (original mode AA/AE/AR, enhanced mode CA/CE/CR);
ERR-3 uses table 0357 (message error condition codes) as carried by `MappingError.hl7_code`.
"""

from __future__ import annotations

import re
from datetime import datetime

from mappers.errors import MappingError
from mappers.hl7v2_wire import Msh, escape, format_ts, reencode

#: HL7 table 0008 acknowledgment codes.
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})

#: HL7 table 0357 message error condition codes -> their text.
HL7_0357: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

_LOCATION = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:\.(\d+))?(?:\.(\d+))?$")
_EVENT = re.compile(r"^[A-Z0-9]{3}$")
MSA_TEXT_MAX = 80


def error_location(location: str) -> str:
    """A mapping location (``OBX[3].5``, ``MSH[1].10``, ``PID``) -> HL7 ERL (``OBX^3^5``).

    Returns ``""`` when the location is not an HL7 segment path.
    """
    m = _LOCATION.match(location)
    if m is None:
        return ""
    seg, seq, field, comp = m.groups()
    parts = [seg, seq or "1"]
    if field:
        parts.append(field)
        if comp:
            parts += ["1", comp]
    return "^".join(parts)


def build_ack(
    msh: Msh,
    code: str,
    *,
    control_id: str,
    now: datetime,
    error: MappingError | None = None,
    text: str = "",
    ack_types: tuple[str, str] | None = None,
) -> bytes:
    """An ACK answering the message whose header is `msh`.

    MSH: sender and receiver swapped, MSH-9 ``ACK^<inbound trigger or R01>^ACK``, MSH-10 =
    `control_id`, inbound processing id and version (``P`` / ``2.5.1`` when unknown).
    MSA: MSA-1 = `code`, MSA-2 = inbound MSH-10, MSA-3 = `text` (or the error, at most 80
    characters). ERR when `error` is given: ERR-2 location, ERR-3 ``<code>^<text>^HL70357``,
    ERR-4 ``E``, ERR-8 the error message. Segments are joined by CR (no trailing CR).
    `ack_types`: MSH-15 and MSH-16 of the ACK itself (an application ACK sends ``NE``,
    ``NE`` so that it is not acknowledged in turn); left out when None.
    """
    if code not in ACK_CODES:
        raise ValueError(f"ACK code must be one of {sorted(ACK_CODES)}, got {code!r}")
    enc = msh.encoding
    trigger = msh.trigger_event if _EVENT.match(msh.trigger_event) else "R01"
    header = [
        "MSH",
        "^~\\&",
        reencode(msh.receiving_application, enc),
        reencode(msh.receiving_facility, enc),
        reencode(msh.sending_application, enc),
        reencode(msh.sending_facility, enc),
        format_ts(now),
        "",
        f"ACK^{trigger}^ACK",
        escape(control_id),
        escape(msh.processing_id or "P"),
        escape(msh.version_id or "2.5.1"),
    ]
    if ack_types is not None:
        header += ["", "", escape(ack_types[0]), escape(ack_types[1])]  # MSH-13..16
    msa_text = text or (str(error) if error is not None else "")
    segments = [
        "MSH|" + "|".join(header[1:]),
        "|".join(["MSA", code, escape(msh.control_id), escape(msa_text[:MSA_TEXT_MAX])]).rstrip(
            "|"
        ),
    ]
    if error is not None:
        condition = HL7_0357.get(error.hl7_code, HL7_0357[207])
        segments.append(
            "|".join(
                [
                    "ERR",
                    "",
                    error_location(error.location),
                    f"{error.hl7_code}^{escape(condition)}^HL70357",
                    "E",
                    "",
                    "",
                    "",
                    escape(str(error)),
                ]
            )
        )
    return "\r".join(segments).encode("utf-8")
