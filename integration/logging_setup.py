"""Structured logs without PHI: one logging setup for every ecgbridge process.

Each line carries ``ts``, ``level``, ``logger``, ``message`` and, where known, the context
fields ``item_id``, ``trace_id``, ``span_id``, ``channel``, ``sender`` and ``event``: from
`log_context` (set around the work on one ECG), from ``extra=`` on the call, and the trace
and span ids of the current OpenTelemetry span. ``json`` writes one JSON object per line
(for log shippers); ``text`` the same fields as ``key=value`` after a readable line.

`PhiFilter` sits on the handler, so it sees every record of every logger: it redacts fields
named like patient data (patient id, name, birth date, MRN, ...) even when a developer passes
them with ``extra=``, and HL7 PID segments or FHIR patient elements pasted into a message,
and names what it redacted in ``phi_redacted``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any, Literal

from opentelemetry import trace

LogFormat = Literal["json", "text"]

#: The context fields every line may carry, in this order.
CONTEXT_FIELDS = ("item_id", "trace_id", "span_id", "channel", "sender", "event")
REDACTED = "[redacted]"

#: ``extra=`` keys (compared lower-case, ``-`` as ``_``) that hold patient data.
PHI_FIELDS = frozenset(
    {
        "patient",
        "patient_id",
        "patientid",
        "patient_name",
        "patient_identifier",
        "patient_reference",
        "given",
        "given_name",
        "family",
        "family_name",
        "first_name",
        "last_name",
        "full_name",
        "birth_date",
        "birthdate",
        "date_of_birth",
        "dob",
        "mrn",
        "medical_record_number",
        "ssn",
        "social_security_number",
        "address",
        "phone",
        "telecom",
        "email",
        "pid",
    }
)

#: HL7 v2 segments that identify the patient or other persons (next of kin, guarantor,
#: insured) or the visit (PV1-19 visit number), anywhere in a text, up to the segment's
#: end: a carriage return or newline, or their escaped forms in a repr.
_PHI_SEGMENTS = ("PID", "PD1", "NK1", "GT1", "IN1", "IN2", "MRG", "PV1")
_PID_SEGMENT = re.compile(
    r"(?:(?<![A-Za-z0-9])|(?<=\\r)|(?<=\\n))(" + "|".join(_PHI_SEGMENTS) + r")\|"
    r"(?:(?!\\r|\\n)[^\r\n])*"
)
#: FHIR patient elements as JSON or Python-repr keys: their whole value (a string, or a
#: nested array or object, however deep) is redacted.
_FHIR_PHI_KEY = re.compile(
    r"""(["'])(birthDate|given|family|name|telecom|address|identifier)\1\s*:\s*"""
)

# The attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_OURS = frozenset({"phi_redacted", *CONTEXT_FIELDS})

_NO_CONTEXT: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("ecgbridge_log_context", default=_NO_CONTEXT)


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add context fields (``item_id``, ``channel``, ...) to every line logged inside."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown log context field(s) {sorted(unknown)}; use {', '.join(CONTEXT_FIELDS)}"
        )
    merged = dict(_context.get()) | {k: v for k, v in fields.items() if v is not None}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def scrub_text(text: str) -> str:
    """The text with HL7 patient / person segments and FHIR patient elements (JSON or a
    Python repr) replaced by ``[redacted]``."""
    if "|" in text:
        text = _PID_SEGMENT.sub(lambda m: f"{m.group(1)}|{REDACTED}", text)
    if '"' in text or "'" in text:
        text = _redact_fhir_values(text)
    return text


def _redact_fhir_values(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _FHIR_PHI_KEY.finditer(text):
        if m.start() < pos:  # inside a value already redacted
            continue
        end = _value_end(text, m.end())
        out.append(text[pos : m.end()])
        out.append(f"{m.group(1)}{REDACTED}{m.group(1)}")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _value_end(text: str, start: int) -> int:
    """Where the JSON (or repr) value starting at `start` ends: a quoted string, or an
    array or object with its nesting and strings balanced, or a bare word. Unbalanced
    (a cut-off text): the end of the text."""
    if start >= len(text):
        return start
    first = text[start]
    if first in "\"'":
        i = start + 1
        while i < len(text) and text[i] != first:
            i += 2 if text[i] == "\\" else 1
        return min(i + 1, len(text))
    if first in "[{":
        depth, i, quote = 0, start, ""
        while i < len(text):
            ch = text[i]
            if quote:
                if ch == "\\":
                    i += 1
                elif ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return len(text)
    match = re.match(r"[^,}\]\s]*", text[start:])
    return start + (match.end() if match else 0)


def _is_phi_key(key: str) -> bool:
    return key.lower().replace("-", "_") in PHI_FIELDS


def _scrub_value(value: Any, found: set[str], path: str) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if _is_phi_key(str(k)):
                found.add(f"{path}.{k}")
                out[str(k)] = REDACTED
            else:
                out[str(k)] = _scrub_value(v, found, f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_scrub_value(v, found, path) for v in value]
    if isinstance(value, str):
        clean = scrub_text(value)
        if clean != value:
            found.add(path)
        return clean
    return value


class PhiFilter(logging.Filter):
    """Redact patient data from a record before any handler formats it. Never drops the
    line: the event stays visible, the patient data does not."""

    def filter(self, record: logging.LogRecord) -> bool:
        found: set[str] = set()
        for key in [k for k in record.__dict__ if k not in _STANDARD and k not in _OURS]:
            if _is_phi_key(key):
                found.add(key)
                setattr(record, key, REDACTED)
            else:
                setattr(record, key, _scrub_value(record.__dict__[key], found, key))
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not raise at the caller (filters run
            # outside the handler's error handling); its arguments are not shown at all
            record.msg = scrub_text(str(record.msg)) + " [arguments dropped: did not format]"
            record.args = None
            message = record.msg
        clean = scrub_text(message)
        if clean != message:
            found.add("message")
            record.msg, record.args = clean, None
        if found:
            record.phi_redacted = sorted(found)
        return True


def context_fields(record: logging.LogRecord) -> dict[str, str]:
    """The context fields of a record: `log_context`, then ``extra=``, then the current
    span's trace and span ids (W3C hex)."""
    fields = dict(_context.get())
    for key in CONTEXT_FIELDS:
        value = record.__dict__.get(key)
        if value is not None:
            fields[key] = str(value)
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields.setdefault("trace_id", format(span.trace_id, "032x"))
        fields.setdefault("span_id", format(span.span_id, "016x"))
    return {k: fields[k] for k in CONTEXT_FIELDS if k in fields}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD and k not in CONTEXT_FIELDS and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, context fields, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= context_fields(record)
        for key, value in _extras(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = scrub_text(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message [item_id=... trace_id=...]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = context_fields(record) | {
            k: str(v) for k, v in _extras(record).items() if k == "phi_redacted"
        }
        if fields:
            line += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return line

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return scrub_text(super().formatException(ei))


class _EcgbridgeHandler(logging.StreamHandler[IO[str]]):
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(
    *, fmt: LogFormat, level: int | str = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """Install the one root handler (PHI filter + formatter); idempotent. Other handlers on
    the root logger are removed: every library's records go through this one."""
    handler = _EcgbridgeHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(PhiFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, _EcgbridgeHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler
