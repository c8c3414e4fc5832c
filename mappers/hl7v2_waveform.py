"""HL7 v2.3-2.8 waveform OBX (chapter 7, waveform results): NA, MA, CD, TS/DTM, NM -> leads.

What is read from the OBX segments of one ORU^R01:

* ``CD`` (channel definition): each OBX-5 repetition defines one channel of the channel
  group named by OBX-4 (sub-id). Components: CD.1 channel identifier (number ``&`` name:
  the lead, any spelling `mappers.leads.canonical_lead` accepts), CD.3 sensitivity and
  units (CSU: sensitivity ``&`` unit id ``&`` unit text, a voltage per data unit), CD.4
  calibration (CCP: correction factor ``&`` baseline ``&`` time skew), CD.5 sampling
  frequency in Hz, CD.6 minimum ``&`` maximum data values (NR). A sample reads
  ``(value - baseline) * sensitivity * correction factor`` in the CSU unit.
* ``MA`` (multiplexed array): repetitions are time samples, components the channels of the
  CD group with the same OBX-4 (or the only CD group), in CD order.
* ``NA`` (numeric array): one lead per OBX, named by OBX-3 (MDC code, MDC reference id or
  plain name) or by the single channel of its CD group; units in OBX-6 unless a CD gives
  a sensitivity. An NA whose repetitions match the channels of its CD group carries one
  channel per repetition.
* ``TS``/``DTM`` (waveform start time): OBX-5 -> the record's acquisition time.
* ``NM`` sampling rate (``MDC_ATTR_SAMP_RATE``, Hz) or interval (``MDC_ATTR_TIME_PD_SAMP``):
  the convention `mappers.hl7v2_oru_out` writes, used when no CD gives a frequency.

Channels that name no standard lead are skipped; a missing standard lead is then reported
together with them (`UnknownLeadError`). Locations read ``OBX[n].f``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
import numpy.typing as npt

from mappers.errors import (
    DuplicateLeadError,
    MissingFieldError,
    NonFiniteSampleError,
    SampleRangeError,
    SamplingRateError,
    SegmentError,
    UnitError,
    WaveformError,
)
from mappers.hl7v2_wire import Encoding, parse_ts, unescape
from mappers.leads import assemble_12, lead_of_any
from mappers.sample_codec import parse_decimals, to_millivolts, voltage_unit

Fields = list[str]

_RATE_KEYS = ("MDC_ATTR_SAMP_RATE", "SAMPLING_FREQUENCY", "SAMPLE_RATE", "SAMPLING FREQUENCY")
_PERIOD_KEYS = ("MDC_ATTR_TIME_PD_SAMP", "SAMPLING_INTERVAL", "SAMPLE_INTERVAL")
_HZ_PER_UNIT = {"hz": 1.0, "": 1.0, "/s": 1.0, "1/s": 1.0, "khz": 1000.0}
_S_PER_UNIT = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "µs": 1e-6}
_MDC_VOLT_UNITS = {"MDC_DIM_MICRO_VOLT": "uV", "MDC_DIM_MILLI_VOLT": "mV", "MDC_DIM_VOLT": "V"}


@dataclass(frozen=True, slots=True)
class Channel:
    """One CD channel definition: a digital value ``v`` reads
    ``(v - baseline) * sensitivity * correction`` in `unit` (a canonical voltage unit)."""

    lead: str | None
    location: str
    unit: str | None = None
    sensitivity: float = 1.0
    correction: float = 1.0
    baseline: float = 0.0
    fs_hz: float | None = None
    minimum: float | None = None
    maximum: float | None = None


@dataclass(slots=True)
class Waveform:
    """What the OBX segments say: leads in mV and where each came from."""

    leads: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    locations: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    fs_hz: float | None = None
    fs_loc: str = ""
    start: datetime | None = None
    first_obx: tuple[int, Fields] | None = None

    def add(
        self, lead: str | None, values_mv: npt.NDArray[np.float32], loc: str, ident_loc: str = ""
    ) -> None:
        if lead is None:
            self.unknown.append(ident_loc or loc)
            return
        if lead in self.leads:
            raise DuplicateLeadError(
                f"lead {lead} sent twice (first in {self.locations[lead]})",
                location=ident_loc or loc,
            )
        self.leads[lead] = values_mv
        self.locations[lead] = loc

    def set_rate(self, rate: float, loc: str) -> None:
        if not (np.isfinite(rate) and rate > 0):
            raise SamplingRateError("sampling rate must be a positive number", location=loc)
        if self.fs_hz is not None and not np.isclose(rate, self.fs_hz):
            raise SamplingRateError(
                f"sampling rate {rate:g} Hz contradicts {self.fs_hz:g} Hz in {self.fs_loc}",
                location=loc,
            )
        self.fs_hz, self.fs_loc = rate, loc


def get(fields: Fields, n: int) -> str:
    return fields[n] if n < len(fields) else ""


def components(value: str, enc: Encoding) -> list[str]:
    return [unescape(c, enc).strip() for c in value.split(enc.repetition)[0].split(enc.component)]


def _number(text: str, loc: str, what: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise WaveformError(f"{what} {text[:20]!r} is not a number", location=loc) from None
    if not np.isfinite(value):
        raise NonFiniteSampleError(f"{what} is not finite", location=loc)
    return value


def _voltage(texts: list[str], loc: str) -> str:
    comps = [c for c in texts if c]
    if not comps:
        raise MissingFieldError("waveform units are empty", location=loc)
    for comp in comps[:2]:
        unit = voltage_unit(comp) or _MDC_VOLT_UNITS.get(comp.upper())
        if unit is not None:
            return unit
    raise UnitError(f"units {comps[0][:20]!r} are not a voltage (uV, mV, V)", location=loc)


def parse_cd(value: str, enc: Encoding, loc: str) -> list[Channel]:
    """The channel definitions of one CD OBX-5 (one per repetition)."""
    channels = []
    for i, rep in enumerate(value.split(enc.repetition), start=1):
        comps = rep.split(enc.component)
        where = f"{loc}.5" if i == 1 else f"{loc}.5({i})"

        def subs(n: int, comps: list[str] = comps) -> list[str]:
            raw = comps[n - 1] if n - 1 < len(comps) else ""
            return [unescape(s, enc).strip() for s in raw.split(enc.subcomponent)] + [""] * 3

        ident, csu, ccp, nr = subs(1), subs(3), subs(4), subs(6)
        sensitivity = _number(csu[0], f"{where}.3", "channel sensitivity")
        unit = _voltage(csu[1:3], f"{where}.3") if (csu[1] or csu[2]) else None
        if sensitivity is not None and sensitivity == 0:
            raise WaveformError("channel sensitivity is zero", location=f"{where}.3")
        correction = _number(ccp[0], f"{where}.4", "calibration correction factor")
        fs = _number(subs(5)[0], f"{where}.5", "channel sampling frequency")
        channels.append(
            Channel(
                lead=lead_of_any([ident[1], ident[0] if not ident[0].isdigit() else None]),
                location=where,
                unit=unit,
                sensitivity=1.0 if sensitivity is None else sensitivity,
                correction=1.0 if correction is None or correction == 0 else correction,
                baseline=_number(ccp[1], f"{where}.4", "calibration baseline") or 0.0,
                fs_hz=fs,
                minimum=_number(nr[0], f"{where}.6", "minimum data value"),
                maximum=_number(nr[1], f"{where}.6", "maximum data value"),
            )
        )
    return channels


def _scaled(values: npt.NDArray[np.float64], ch: Channel, unit: str) -> npt.NDArray[np.float32]:
    lo, hi = ch.minimum, ch.maximum
    if (lo is not None and values.min() < lo) or (hi is not None and values.max() > hi):
        raise SampleRangeError(
            f"data values outside the declared range {lo:g}..{hi:g}"
            if lo is not None and hi is not None
            else "data values outside the declared range",
            location=ch.location,
        )
    if ch.baseline:
        values = values - ch.baseline
    scale = ch.sensitivity * ch.correction
    if scale != 1.0:
        values = values * scale
    return to_millivolts(values, unit)


def _samples(text: str, sep: str, loc: str) -> npt.NDArray[np.float64]:
    try:
        return parse_decimals(text, sep)
    except ValueError:
        raise NonFiniteSampleError(
            "samples are not all finite numbers", location=f"{loc}.5"
        ) from None


def _ma(text: str, channels: list[Channel], enc: Encoding, loc: str) -> npt.NDArray[np.float64]:
    n_ch = len(channels)
    reps = text.count(enc.repetition) + 1
    comps = text.count(enc.component)
    if comps != reps * (n_ch - 1):
        raise WaveformError(
            f"multiplexed samples do not all have {n_ch} channels (CD)", location=f"{loc}.5"
        )
    flat = _samples(text.replace(enc.repetition, enc.component), enc.component, loc)
    matrix = flat.reshape(reps, n_ch)
    if n_ch > 1 and any(r.count(enc.component) != n_ch - 1 for r in text.split(enc.repetition)):
        raise WaveformError(
            f"multiplexed samples do not all have {n_ch} channels (CD)", location=f"{loc}.5"
        )
    return matrix.T


def read_obx(
    obxs: list[tuple[int, Fields]], enc: Encoding
) -> tuple[npt.NDArray[np.float32], float, str, Waveform]:
    """The 12-lead samples (mV), rate and its location, and everything else read.

    Consumes the waveform OBX-5 values: each is emptied in `obxs` once its samples are read,
    so a 12-lead message is not held as text and as numbers at once."""
    wf = Waveform()
    groups: dict[str, list[Channel]] = {}
    for k, fields in obxs:
        if get(fields, 2).strip().upper() == "CD":
            sub_id = get(fields, 4).strip()
            groups.setdefault(sub_id, []).extend(parse_cd(get(fields, 5), enc, f"OBX[{k}]"))
    for k, fields in obxs:
        loc = f"OBX[{k}]"
        value_type = get(fields, 2).strip().upper()
        if value_type in ("NA", "MA"):
            wf.first_obx = wf.first_obx or (k, fields)
            group = groups.get(get(fields, 4).strip())
            if group is None and len(groups) == 1:
                group = next(iter(groups.values()))
            _data_obx(wf, fields, loc, value_type, group, enc)
            if len(fields) > 5:
                fields[5] = ""  # the samples are read: let their text go (peak memory)
        elif value_type in ("TS", "DTM", "DT") and wf.start is None:
            wf.start = parse_ts(components(get(fields, 5), enc)[0], location=f"{loc}.5")
        elif value_type == "NM":
            rate = _rate_hz(fields, loc, enc)
            if rate is not None:
                wf.set_rate(rate, f"{loc}.5")
    for group in groups.values():
        for ch in group:
            if ch.fs_hz is not None:
                wf.set_rate(ch.fs_hz, f"{ch.location}.5")
    if not wf.leads and not wf.unknown:
        raise SegmentError("no waveform OBX (value type NA or MA)", location="OBX")
    signals = assemble_12(wf.leads, locations=wf.locations, unknown=wf.unknown, where="OBX")
    if wf.fs_hz is None:
        raise MissingFieldError(
            "no sampling rate: send CD.5 or an NM OBX coded MDC_ATTR_SAMP_RATE in Hz",
            location="OBX",
        )
    return signals, wf.fs_hz, wf.fs_loc, wf


def _data_obx(
    wf: Waveform,
    fields: Fields,
    loc: str,
    value_type: str,
    group: list[Channel] | None,
    enc: Encoding,
) -> None:
    value = get(fields, 5)
    obx6 = get(fields, 6)
    if value_type == "MA":
        if not group:
            raise MissingFieldError(
                "MA waveform without channel definitions (a CD OBX)", location=f"{loc}.5"
            )
        matrix = _ma(value, group, enc, loc)
        for ch, row in zip(group, matrix, strict=True):
            unit = ch.unit or _voltage(components(obx6, enc), f"{loc}.6")
            wf.add(ch.lead, _scaled(row, ch, unit), ch.location)
        return
    reps = value.split(enc.repetition)
    if group and len(group) == len(reps) and len(reps) > 1:
        for ch, rep in zip(group, reps, strict=True):
            unit = ch.unit or _voltage(components(obx6, enc), f"{loc}.6")
            wf.add(ch.lead, _scaled(_samples(rep, enc.component, loc), ch, unit), ch.location)
        return
    ident = get(fields, 3).split(enc.repetition)[0].split(enc.component)
    lead = lead_of_any([unescape(c, enc).strip() for c in ident])
    ch = Channel(lead=lead, location=f"{loc}.3")
    if group and len(group) == 1:
        ch = replace(group[0], lead=lead or group[0].lead)
    elif group and lead is not None:
        ch = next((c for c in group if c.lead == lead), ch)
    if ch.lead is None:
        wf.unknown.append(f"{loc}.3")
        return
    unit = ch.unit or _voltage(components(obx6, enc), f"{loc}.6")
    if ch.lead in wf.leads:
        wf.add(ch.lead, np.zeros(0, np.float32), f"{loc}.5", f"{loc}.3")
    wf.add(ch.lead, _scaled(_samples(value, enc.component, loc), ch, unit), f"{loc}.5", f"{loc}.3")


def _rate_hz(fields: Fields, loc: str, enc: Encoding) -> float | None:
    ident = get(fields, 3).upper()
    is_rate = any(key in ident for key in _RATE_KEYS)
    is_period = not is_rate and any(key in ident for key in _PERIOD_KEYS)
    if not (is_rate or is_period):
        return None
    try:
        value = float(unescape(get(fields, 5), enc).strip())
    except ValueError:
        raise SamplingRateError("sampling rate is not a number", location=f"{loc}.5") from None
    if not (np.isfinite(value) and value > 0):
        raise SamplingRateError("sampling rate must be a positive number", location=f"{loc}.5")
    unit = components(get(fields, 6), enc)[0].lower()
    if is_rate:
        if unit not in _HZ_PER_UNIT:
            raise SamplingRateError(
                f"sampling rate unit {unit[:10]!r} is not Hz", location=f"{loc}.6"
            )
        return value * _HZ_PER_UNIT[unit]
    if unit not in _S_PER_UNIT:
        raise SamplingRateError(
            f"sampling interval unit {unit[:10]!r} is not ms, s or us", location=f"{loc}.6"
        )
    return 1.0 / (value * _S_PER_UNIT[unit])
