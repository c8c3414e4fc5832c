"""`parse_decimals`: the orjson fast path must read exactly what ``float()`` reads, and hand
everything it does not understand to the token path (which keeps its errors)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mappers import sample_codec
from mappers.sample_codec import parse_decimals

_DECIMAL = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.decimals(allow_nan=False, allow_infinity=False, places=6).map(lambda d: f"{d:f}"),
    st.from_regex(r"-?[1-9][0-9]{0,4}\.[0-9]{1,6}([eE][-+]?[0-9]{1,2})?", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_DECIMAL, min_size=1, max_size=50))
def test_fast_path_reads_what_float_reads(tokens: list[str]) -> None:
    expected = np.array([float(t) for t in tokens], dtype=np.float64)
    got = parse_decimals(" ".join(tokens), None)
    np.testing.assert_array_equal(got, expected)
    got_sep = parse_decimals("^".join(tokens), "^")
    np.testing.assert_array_equal(got_sep, expected)


def test_fast_path_is_taken_for_plain_single_spaced_numbers() -> None:
    fast = sample_codec._parse_json_numbers("1 -2 0.125 3e2", None)
    assert fast is not None
    np.testing.assert_array_equal(fast, [1.0, -2.0, 0.125, 300.0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1  2", [1.0, 2.0]),  # run of spaces
        ("+1 .5 2.", [1.0, 0.5, 2.0]),  # not JSON numbers, still decimals
        ("1\t2\n3", [1.0, 2.0, 3.0]),  # other whitespace
        ("007 1", [7.0, 1.0]),  # leading zeros
    ],
)
def test_other_spellings_take_the_token_path(text: str, expected: list[float]) -> None:
    assert sample_codec._parse_json_numbers(text, None) is None
    np.testing.assert_array_equal(parse_decimals(text, None), expected)


@pytest.mark.parametrize(
    "text", ["true 1", "1 null", '"1" 2', "[1] 2", "1,2", "1 2 {}", "NaN 1", "1 inf", ""]
)
def test_non_numbers_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"samples|no samples|could not convert|string"):
        parse_decimals(text, None)
