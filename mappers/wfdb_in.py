"""WFDB records (PhysioNet WFDB format, as read by wfdb-python 4.x) -> EcgRecord.

Reading files is the caller's business (``wfdb.rdrecord``); this module maps the in-memory
`wfdb.Record`. Physical samples (`p_signal`, else `d_signal` with gain and baseline) are
converted from each channel's units (``mV``/``uV``/``V``, case-insensitive; none = mV, the
WFDB default) to float32 mV. Channel names go through `mappers.leads.canonical_lead`; channels
that are not one of the 12 standard leads (PTB's Frank leads vx, vy, vz) are dropped.

Header comments are read in two dialects:

* PhysioNet/CinC Challenge 2021 (PTB-XL, ...): ``Age: 74``, ``Sex: Male``,
  ``Dx: 164889003,59118001`` (SNOMED CT codes).
* PTB Diagnostic ECG Database: ``age: 81``, ``sex: female``, ``Reason for admission: ...``,
  ``Acute infarction (localization): infero-latera``, the coronary angiography lines
  (``Left coronary artery stenoses (RIVA): RIVA 70% proximal ...``) kept as text.

An age above 130 is PTB-XL's marker for "over 89" (it stores 300) and is read as 90.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.errors import EcgValidationError
from inference.record import LEADS_12, Demographics, EcgRecord, Sex
from mappers.errors import LeadError, MissingFieldError, WaveformError
from mappers.leads import canonical_lead
from mappers.sample_codec import to_millivolts, voltage_unit

if TYPE_CHECKING:
    import wfdb

_OVER_89_AGE = 90.0
_SEX = {"male": Sex.MALE, "m": Sex.MALE, "female": Sex.FEMALE, "f": Sex.FEMALE}
_ANGIO_KEYS = ("coronary", "stenos", "vessel", "ventriculography")


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    """What the header comments say about the patient and the ECG."""

    age_years: float | None = None
    sex: Sex = Sex.UNKNOWN
    #: SNOMED CT codes from a CinC-style ``Dx:`` line.
    dx_snomed: tuple[str, ...] = ()
    reason_for_admission: str | None = None
    acute_infarction_localization: str | None = None
    #: PTB angiography / coronary findings, ``(key, text)`` as written in the header.
    angiography: tuple[tuple[str, str], ...] = ()
    #: Every ``key: value`` comment line, as written.
    fields: tuple[tuple[str, str], ...] = ()

    @property
    def demographics(self) -> Demographics:
        return Demographics(age_years=self.age_years, sex=self.sex)


def _age(text: str) -> float | None:
    try:
        age = float(text)
    except ValueError:
        return None
    if not math.isfinite(age) or age < 0:
        return None
    return _OVER_89_AGE if age > 130 else age


def parse_header_comments(comments: list[str]) -> HeaderInfo:
    """Parse WFDB header comment lines (with or without the leading ``#``)."""
    pairs: list[tuple[str, str]] = []
    for line in comments:
        key, sep, value = line.strip().lstrip("#").strip().partition(":")
        if sep and key.strip():
            pairs.append((key.strip(), value.strip()))
    age: float | None = None
    sex = Sex.UNKNOWN
    dx: tuple[str, ...] = ()
    reason = localization = None
    angiography: list[tuple[str, str]] = []
    for key, value in pairs:
        low = key.lower()
        if low == "age":
            age = _age(value)
        elif low == "sex":
            sex = _SEX.get(value.lower(), Sex.UNKNOWN)
        elif low == "dx":
            dx = tuple(code.strip() for code in value.split(",") if code.strip().isdigit())
        elif low == "reason for admission":
            reason = value or None
        elif low.startswith("acute infarction (localization)"):
            localization = None if value.lower() in ("", "no", "n/a") else value
        elif any(k in low for k in _ANGIO_KEYS):
            angiography.append((key, value))
    return HeaderInfo(
        age_years=age,
        sex=sex,
        dx_snomed=dx,
        reason_for_admission=reason,
        acute_infarction_localization=localization,
        angiography=tuple(angiography),
        fields=tuple(pairs),
    )


def _physical(rec: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    if rec.p_signal is not None:
        return np.asarray(rec.p_signal, dtype=np.float64)
    if rec.d_signal is None:
        raise MissingFieldError("WFDB record holds no samples", location="signal")
    gain = np.asarray(rec.adc_gain, dtype=np.float64)
    baseline = np.asarray(rec.baseline, dtype=np.float64)
    return (np.asarray(rec.d_signal, dtype=np.float64) - baseline) / gain


def _acquired_at(rec: Any) -> datetime | None:
    if rec.base_date is None:
        return None
    base_time = rec.base_time if isinstance(rec.base_time, time) else time()
    return datetime.combine(rec.base_date, base_time, tzinfo=UTC)


def record_from_wfdb(rec: wfdb.Record, *, record_id: str | None = None) -> EcgRecord:
    """A `wfdb.Record` (12 standard leads among its channels) -> `EcgRecord`.

    Raises `LeadError` (a standard lead missing or duplicated), `WaveformError` (non-voltage
    units, NaN samples, domain validation) or `MissingFieldError` (no samples, no rate).
    Base date/time, when present, are taken as UTC (WFDB stores no time zone).
    """
    signal = _physical(rec)
    names: list[str] = list(rec.sig_name or [])
    units: list[str | None] = list(rec.units or [None] * len(names))
    columns: dict[str, tuple[int, str]] = {}
    for j, name in enumerate(names):
        try:
            lead = canonical_lead(str(name))
        except LeadError:
            continue
        if lead in columns:
            raise LeadError(
                f"lead {lead} appears twice (signals {columns[lead][0]} and {j})",
                location=f"signal {j}",
            )
        unit = voltage_unit(units[j] or "mV")
        if unit is None:
            raise WaveformError(
                f"signal {j} ({lead}) units {units[j]!r} are not a voltage", location=f"signal {j}"
            )
        columns[lead] = (j, unit)
    missing = [lead for lead in LEADS_12 if lead not in columns]
    if missing:
        raise LeadError(f"missing leads {', '.join(missing)}", location="sig_name")
    if not rec.fs:
        raise MissingFieldError("WFDB record has no sampling frequency", location="fs")
    rows = [to_millivolts(signal[:, columns[lead][0]], columns[lead][1]) for lead in LEADS_12]
    info = parse_header_comments(list(rec.comments or []))
    name = str(rec.record_name)
    try:
        return EcgRecord(
            signals_mv=np.stack(rows).astype(np.float32, copy=False),
            lead_names=LEADS_12,
            fs_hz=float(rec.fs),
            record_id=record_id or name,
            acquired_at=_acquired_at(rec),
            demographics=info.demographics,
            identifiers=(("wfdb", name),),
        )
    except EcgValidationError as exc:
        raise WaveformError(str(exc), location=exc.field) from exc


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def check_header_text(text: str) -> None:
    """Check the numeric fields of a WFDB header (PhysioNet WFDB header format).

    wfdb-python silently falls back to defaults on some malformed fields (a non-numeric
    sampling frequency reads as 250 Hz), which would misread an ECG without a word. This
    check refuses such headers first; `location` names the field (``fs``, ``n_sig``,
    ``signal[3].gain``...).
    """
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise MissingFieldError("the header has no record line", location="record line")
    fields = lines[0].split()
    if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) == 0:
        raise WaveformError("number of signals is not a positive integer", location="n_sig")
    n_sig = int(fields[1])
    if len(fields) >= 3:
        fs = _number(fields[2].split("/")[0].split("(")[0])
        if fs is None or fs <= 0:
            raise WaveformError(
                f"sampling frequency {fields[2]!r} is not a positive number", location="fs"
            )
    if len(fields) >= 4 and not fields[3].isdigit():
        raise WaveformError(f"signal length {fields[3]!r} is not an integer", location="sig_len")
    signal_lines = lines[1 : 1 + n_sig]
    if len(signal_lines) < n_sig:
        raise MissingFieldError(
            f"header declares {n_sig} signals but has {len(signal_lines)} signal lines",
            location="signal lines",
        )
    for i, line in enumerate(signal_lines):
        parts = line.split()
        if len(parts) >= 3:
            gain = _number(parts[2].split("/")[0].split("(")[0])
            if gain is None:
                raise WaveformError(
                    f"ADC gain {parts[2]!r} is not a number", location=f"signal[{i}].gain"
                )
