"""HL7 v2.5.1 wire syntax (chapter 2): segments, delimiters, escapes, TS/DTM, and the MSH.

A fast, allocation-light tokenizer for inbound messages (hl7apy is far too slow for
waveforms; see ARCHITECTURE.md). Segments end in CR (LF and CRLF are accepted too); fields
are split on MSH-1 and components, repetitions and subcomponents per MSH-2. Locations in
errors read ``SEG[n].f`` (segment id, 1-based occurrence, field number), e.g. ``MSH[1].10``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

from mappers.errors import DataTypeError, MessageTypeError, MissingFieldError, SegmentError

STANDARD_ENCODING_CHARS = "^~\\&"
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")
_HEX_ESCAPE = re.compile(r"^X([0-9A-Fa-f]{2})+$")


@dataclass(frozen=True, slots=True)
class Encoding:
    """The delimiters of one message (MSH-1 and MSH-2)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def is_standard(self) -> bool:
        return self == STANDARD


STANDARD = Encoding()


@dataclass(frozen=True)
class Msh:
    """The message header, as needed to route, acknowledge and identify a message.

    Application and facility fields (HD) are kept as sent, components included, in the
    sender's delimiters (`encoding`), so an ACK can echo them. `message_type` is
    ``"<MSH-9.1>^<MSH-9.2>"`` (e.g. ``"ORU^R01"``) whatever the sender's delimiters.
    """

    field_sep: str
    encoding_chars: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_datetime: str
    message_type: str
    control_id: str
    processing_id: str
    version_id: str
    accept_ack_type: str
    application_ack_type: str
    message_structure: str = ""
    character_set: str = ""

    @property
    def encoding(self) -> Encoding:
        chars = (self.encoding_chars + STANDARD_ENCODING_CHARS[len(self.encoding_chars) :])[:4]
        return Encoding(self.field_sep, chars[0], chars[1], chars[2], chars[3])

    @property
    def trigger_event(self) -> str:
        parts = self.message_type.split("^")
        return parts[1] if len(parts) > 1 else ""


def fallback_msh() -> Msh:
    """An MSH for answering a message whose own MSH could not be read (AR with empty MSA-2)."""
    return Msh(
        field_sep="|",
        encoding_chars=STANDARD_ENCODING_CHARS,
        sending_application="",
        sending_facility="",
        receiving_application="",
        receiving_facility="",
        message_datetime="",
        message_type="",
        control_id="",
        processing_id="P",
        version_id="2.5.1",
        accept_ack_type="",
        application_ack_type="",
    )


def decode_message(message: bytes | str) -> str:
    """Bytes -> text: UTF-8 when valid, else ISO 8859-1 (never fails). MLLP framing stripped."""
    if isinstance(message, str):
        text = message
    else:
        try:
            text = bytes(message).decode("utf-8")
        except UnicodeDecodeError:
            text = bytes(message).decode("latin-1")
    return text.strip("\x0b\x1c\r\n\t ")


def split_segments(text: str) -> list[str]:
    """Segments of a message: split on CR, CRLF or LF; blank lines dropped."""
    return [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]


def parse_msh_segment(segment: str) -> tuple[Msh, list[str]]:
    """The MSH and its fields (index i = MSH-(i+1); index 0 is ``"MSH"``)."""
    if not segment.startswith("MSH"):
        raise SegmentError("message does not start with an MSH segment", location="MSH")
    if len(segment) < 8:
        raise MessageTypeError("not HL7 v2: MSH too short for its delimiters", location="MSH")
    field_sep = segment[3]
    rest = segment[4:]
    enc_chars = rest.split(field_sep, 1)[0]
    if (
        field_sep.isalnum()
        or field_sep.isspace()
        or not 2 <= len(enc_chars) <= 5
        or len(set(enc_chars + field_sep)) != len(enc_chars) + 1
        or any(c.isalnum() or c.isspace() for c in enc_chars)
    ):
        raise MessageTypeError("not HL7 v2: invalid MSH-1/MSH-2 delimiters", location="MSH[1].2")
    fields = [segment[:3], *segment[4:].split(field_sep)]
    enc = Encoding(field_sep, *(enc_chars + STANDARD_ENCODING_CHARS[len(enc_chars) :])[:4])

    def get(n: int) -> str:
        return fields[n - 1] if n - 1 < len(fields) else ""

    msg_type = get(9).split(enc.repetition)[0].split(enc.component)
    type_code = unescape(msg_type[0], enc).strip()
    trigger = unescape(msg_type[1], enc).strip() if len(msg_type) > 1 else ""
    structure = unescape(msg_type[2], enc).strip() if len(msg_type) > 2 else ""
    control_id = unescape(get(10), enc).strip()
    msh = Msh(
        field_sep=field_sep,
        encoding_chars=enc_chars,
        sending_application=get(3),
        sending_facility=get(4),
        receiving_application=get(5),
        receiving_facility=get(6),
        message_datetime=get(7).split(enc.component)[0],
        message_type=f"{type_code}^{trigger}" if trigger else type_code,
        control_id=control_id,
        processing_id=unescape(get(11).split(enc.component)[0], enc),
        version_id=unescape(get(12).split(enc.component)[0], enc),
        accept_ack_type=unescape(get(15), enc),
        application_ack_type=unescape(get(16), enc),
        message_structure=structure,
        character_set=unescape(get(18).split(enc.repetition)[0], enc),
    )
    if not type_code:
        raise MissingFieldError("MSH-9 message type is empty", location="MSH[1].9")
    if not control_id:
        raise MissingFieldError("MSH-10 message control id is empty", location="MSH[1].10")
    return msh, fields


def parse_msh(message: bytes | str) -> Msh:
    """The MSH of an inbound message, enough to acknowledge it even when its body is bad.

    Raises `SegmentError` (no MSH), `MessageTypeError` (not HL7 v2 delimiters) or
    `MissingFieldError` (no MSH-9 or MSH-10). Never raises anything else.
    """
    try:
        segments = split_segments(decode_message(message))
        if not segments:
            raise SegmentError("empty message", location="MSH")
        return parse_msh_segment(segments[0])[0]
    except (SegmentError, MessageTypeError, MissingFieldError):
        raise
    except Exception as exc:
        raise MessageTypeError(
            f"not HL7 v2: unreadable MSH ({type(exc).__name__})", location="MSH"
        ) from exc


def check_segment_id(segment: str, field_sep: str, line: int) -> str:
    """The 3-character id of a segment; `SegmentError` when it is not one."""
    seg_id = segment[:3]
    if not _SEGMENT_ID.match(seg_id) or (len(segment) > 3 and segment[3] != field_sep):
        raise SegmentError(f"line {line} is not an HL7 segment", location=f"segment {line}")
    return seg_id


def unescape(value: str, enc: Encoding) -> str:
    """Resolve HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\); others are dropped."""
    esc = enc.escape
    if esc not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        end = value.find(esc, i + 1) if ch == esc else -1
        if end < 0:
            out.append(ch)
            i += 1
            continue
        seq = value[i + 1 : end]
        simple = {
            "F": enc.field,
            "S": enc.component,
            "T": enc.subcomponent,
            "R": enc.repetition,
            "E": esc,
        }
        if seq in simple:
            out.append(simple[seq])
        elif _HEX_ESCAPE.match(seq):
            out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
        i = end + 1
    return "".join(out)


def escape(value: str, enc: Encoding = STANDARD) -> str:
    """Escape delimiters in a text value for writing (HL7 v2.5.1 section 2.7)."""
    out = value.replace(enc.escape, f"{enc.escape}E{enc.escape}")
    for ch, code in (
        (enc.field, "F"),
        (enc.component, "S"),
        (enc.subcomponent, "T"),
        (enc.repetition, "R"),
    ):
        out = out.replace(ch, f"{enc.escape}{code}{enc.escape}")
    return out.replace("\r", f"{enc.escape}X0D{enc.escape}").replace(
        "\n", f"{enc.escape}X0A{enc.escape}"
    )


def reencode(raw: str, enc: Encoding) -> str:
    """A raw field in the sender's delimiters -> the same field in the standard ones."""
    if enc.is_standard:
        return raw
    reps = []
    for rep in raw.split(enc.repetition):
        comps = []
        for comp in rep.split(enc.component):
            subs = [escape(unescape(s, enc)) for s in comp.split(enc.subcomponent)]
            comps.append(STANDARD.subcomponent.join(subs))
        reps.append(STANDARD.component.join(comps))
    return STANDARD.repetition.join(reps)


def parse_ts(value: str, *, location: str) -> datetime | None:
    """An HL7 TS/DTM (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``) -> aware datetime.

    Without an offset the time is taken as UTC. Empty -> None; malformed -> `DataTypeError`.
    """
    text = value.strip()
    if not text:
        return None
    m = _TS.match(text)
    if m is None:
        raise DataTypeError("not an HL7 date/time (YYYYMMDDHHMMSS[+ZZZZ])", location=location)
    year, month, day, hour, minute, second, frac, offset = m.groups()
    tz: timezone = UTC
    try:
        if offset:
            sign = -1 if offset[0] == "-" else 1
            delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
            tz = timezone(sign * delta)
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((frac or "0").ljust(6, "0")[:6]),
            tzinfo=tz,
        )
    except ValueError:
        raise DataTypeError("HL7 date/time out of range", location=location) from None


def format_ts(when: datetime) -> str:
    """An aware (or UTC-assumed naive) datetime -> HL7 DTM with seconds and offset."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    text = when.strftime("%Y%m%d%H%M%S")
    if when.microsecond:
        text += f".{when.microsecond // 100:04d}"
    return text + when.strftime("%z")


def format_date(day: date) -> str:
    return day.strftime("%Y%m%d")
