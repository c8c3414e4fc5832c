"""Decimal text <-> float32 millivolt samples, for HL7 v2 NA/NM values and FHIR SampledData.

Voltage units are UCUM codes (``uV``, ``mV``, ``V``). Writing picks the fewest decimals
(down to 1 nV resolution) that reproduce the float32 samples exactly, so integer-microvolt
data such as PTB-XL travels as integers and reads back bit for bit.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import numpy.typing as npt
import orjson

#: Canonical UCUM voltage unit -> how many of them make one millivolt (as an exact divisor
#: or multiplier: uV values are divided by 1000, V values multiplied by 1000).
_PER_MV: dict[str, float] = {"uV": 1000.0, "mV": 1.0, "V": 0.001}

_ALIASES: dict[str, str] = {
    "uv": "uV",
    "µv": "uV",  # micro sign
    "μv": "uV",  # Greek mu
    "microvolt": "uV",
    "microvolts": "uV",
    "mv": "mV",
    "millivolt": "mV",
    "millivolts": "mV",
    "v": "V",
    "volt": "V",
    "volts": "V",
}

#: Finest resolution written: 1 nV, i.e. 3 decimals in uV, 6 in mV, 9 in V.
_MAX_DECIMALS: dict[str, int] = {"uV": 3, "mV": 6, "V": 9}


def voltage_unit(text: str) -> str | None:
    """The canonical UCUM voltage unit (``uV``/``mV``/``V``) for `text`, or None if not a voltage.

    Case-insensitive (``MV`` is taken as millivolts: no ECG is sent in megavolts).
    """
    return _ALIASES.get(text.strip().lower())


def to_millivolts(values: npt.NDArray[np.float64], unit: str) -> npt.NDArray[np.float32]:
    """Values in a canonical voltage unit -> float32 mV (exact division for uV)."""
    per_mv = _PER_MV[unit]
    with np.errstate(over="ignore"):  # out-of-range values become inf, refused downstream
        if per_mv == 1.0:
            return values.astype(np.float32)
        scaled = np.empty(values.shape, dtype=np.float32)
        if per_mv > 1.0:
            return np.divide(values, per_mv, out=scaled, casting="same_kind")
        return np.multiply(values, 1.0 / per_mv, out=scaled, casting="same_kind")


#: Characters that make a JSON array of numbers hold something else (true, false, null, a
#: string, an object, a nested array); `,` must not pass for a separator either.
_NOT_NUMBER_TEXT = ("t", "f", "n", '"', "[", "{", ",")


def parse_decimals(text: str, sep: str | None) -> npt.NDArray[np.float64]:
    """Split `text` on `sep` (None: whitespace) and parse decimals. ValueError if any is not one.

    The common case (numbers separated by single spaces, or by `sep`) is read by orjson as a
    JSON array: several times faster than ``float()`` per token, and bit-identical, since
    both round the decimal correctly. Anything else (runs of spaces, ``+1``, ``.5``, ``1.``,
    NaN) takes the token-by-token path, which accepts what ``float()`` accepts.
    """
    fast = _parse_json_numbers(text, sep)
    if fast is not None:
        return fast
    parts = text.split(sep)
    if not parts or (len(parts) == 1 and not parts[0].strip()):
        raise ValueError("no samples")
    values = np.array(parts, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("samples contain NaN or infinity")
    return values


#: Characters per orjson call: bounds the transient list of Python numbers (~36 bytes each)
#: to some 10 kB whatever the lead's length.
_CHUNK_CHARS = 1024


def _parse_json_numbers(text: str, sep: str | None) -> npt.NDArray[np.float64] | None:
    body = text.strip()
    if not body or any(c in body for c in _NOT_NUMBER_TEXT):
        return None
    split = sep or " "
    out = np.empty(body.count(split) + 1, dtype=np.float64)
    filled = pos = 0
    try:
        while pos < len(body):
            end = body.find(split, pos + _CHUNK_CHARS)
            end = len(body) if end < 0 else end
            chunk = orjson.loads("[" + body[pos:end].replace(split, ",") + "]")
            if not isinstance(chunk, list) or filled + len(chunk) > out.size:
                return None
            out[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            pos = end + len(split)
    except (orjson.JSONDecodeError, ValueError, TypeError, OverflowError):
        return None
    if filled != out.size or not np.isfinite(out).all():
        return None
    return out


#: int16 range at 1 uV resolution: the largest amplitude a 16-bit microvolt channel (WFDB
#: format 16, DICOM SS, aECG digits) carries. Samples beyond it after scaling are refused
#: (`mappers.errors.SampleRangeError`): they mean a misread gain or unit.
MAX_ABS_MV = 32.767


def out_of_range_peak(values_mv: npt.NDArray[np.float32]) -> float | None:
    """The peak |amplitude| in mV when it exceeds `MAX_ABS_MV`, else None."""
    if values_mv.size == 0:
        return None
    peak = float(max(float(values_mv.max()), -float(values_mv.min())))
    return peak if peak > MAX_ABS_MV else None


def scale_values(values: npt.NDArray[np.float64], factor: str) -> npt.NDArray[np.float64]:
    """``values * factor`` (factor as decimal text), dividing exactly when it is 10**-k so that
    integer digits with scale 0.001 read back bit-identically to the decimal text."""
    d = Decimal(factor.strip() or "1")
    if not d.is_finite():
        raise ValueError("scale factor is not finite")
    if d == 1:
        return values
    t = d.normalize().as_tuple()
    if t.digits == (1,) and isinstance(t.exponent, int) and t.sign == 0:
        if t.exponent < 0:
            return values / 10.0 ** (-t.exponent)
        return values * 10.0**t.exponent
    return values * float(d)


def quantize(values_mv: npt.NDArray[np.float32], unit: str) -> tuple[npt.NDArray[np.int64], int]:
    """Samples in `unit` as integers at 10**-decimals resolution, with the fewest decimals.

    Returns ``(ints, decimals)``: the sample in `unit` is ``ints / 10**decimals``. Uses the
    fewest decimals whose values read back (`to_millivolts`) to the same float32, down to
    1 nV resolution (rounding below that otherwise).
    """
    per_mv = _PER_MV[unit]
    in_unit = values_mv.astype(np.float64) * per_mv
    ints = np.zeros(values_mv.shape, dtype=np.int64)
    max_decimals = _MAX_DECIMALS[unit]
    for decimals in range(max_decimals + 1):
        ints = np.rint(in_unit * 10.0**decimals).astype(np.int64)
        back = to_millivolts(ints / 10.0**decimals, unit)
        if np.array_equal(back, values_mv):
            return ints, decimals
    return ints, max_decimals


def format_samples(values_mv: npt.NDArray[np.float32], unit: str, sep: str) -> str:
    """Samples as decimal text in `unit`, joined by `sep` (see `quantize`)."""
    ints, decimals = quantize(values_mv, unit)
    if decimals == 0:
        return sep.join(map(str, ints.tolist()))
    scaled = ints / 10.0**decimals
    return sep.join(f"{v:.{decimals}f}" for v in scaled.tolist())
