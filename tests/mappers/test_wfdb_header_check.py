"""`check_header_text`: malformed numeric header fields are refused, naming the field."""

from pathlib import Path

import pytest

from mappers.errors import MappingError
from mappers.wfdb_in import check_header_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wfdb"


@pytest.mark.parametrize("name", ["HR06000.hea", "s0010_re.hea"])
def test_real_headers_pass(name: str) -> None:
    check_header_text((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda f: [*f[:2], "abc", *f[3:]], "fs"),
        (lambda f: [*f[:2], "-5", *f[3:]], "fs"),
        (lambda f: [*f[:1], "x", *f[2:]], "n_sig"),
        (lambda f: [*f[:3], "5000.5"], "sig_len"),
    ],
)
def test_bad_record_line(edit, field: str) -> None:  # type: ignore[no-untyped-def]
    lines = (FIXTURES / "HR06000.hea").read_text().splitlines()
    lines[0] = " ".join(edit(lines[0].split()))
    with pytest.raises(MappingError) as err:
        check_header_text("\n".join(lines))
    assert err.value.location == field


def test_bad_gain_and_missing_signal_lines() -> None:
    lines = (FIXTURES / "HR06000.hea").read_text().splitlines()
    bad = list(lines)
    bad[4] = bad[4].replace("1000.0(0)/mv", "lots/mv")
    with pytest.raises(MappingError) as err:
        check_header_text("\n".join(bad))
    assert err.value.location == "signal[3].gain"
    with pytest.raises(MappingError):
        check_header_text("\n".join(lines[:5]))
    with pytest.raises(MappingError):
        check_header_text("# only a comment\n")
