"""Order priority (STAT) read from TQ1-9, OBR-27.6, OBR-5 and ORC-7.6."""

import pytest

from mappers.hl7v2_priority import Priority, order_priority

MSH = "MSH|^~\\&|CART|ED|ECGBRIDGE||20261121||ORU^R01|1|P|2.5.1"


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        (["OBR|1||F1|ECG"], Priority.ROUTINE),
        (["OBR|1||F1|ECG", "TQ1|1||||||||S"], Priority.STAT),
        (["|".join(["OBR", "1", "", "F1", "ECG", *[""] * 22, "^^^^^S"])], Priority.STAT),
        (["OBR|1||F1|ECG|A"], Priority.ASAP),
        (["ORC|RE||F1||||^^^^^STAT", "OBR|1||F1|ECG"], Priority.STAT),
        (["OBR|1||F1|ECG|R"], Priority.ROUTINE),
    ],
)
def test_priority(segments: list[str], expected: Priority) -> None:
    assert order_priority("\r".join([MSH, *segments])) is expected


@pytest.mark.parametrize("junk", [b"", b"MSH", b"\xff\xfe", b"PID|1"])
def test_junk_is_routine(junk: bytes) -> None:
    assert order_priority(junk) is Priority.ROUTINE
