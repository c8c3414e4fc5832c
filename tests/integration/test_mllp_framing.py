"""MLLP framing decoder: split reads, pipelining, caps, framing faults."""

from hypothesis import given
from hypothesis import strategies as st

from integration.mllp_framing import Frame, Malformed, MllpDecoder, Oversize, frame

MSG = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X1|P|2.5.1\rPID|1"


def test_one_frame() -> None:
    assert MllpDecoder(max_frame=1000).feed(frame(MSG)) == [Frame(MSG)]


def test_pipelined_frames_in_one_read() -> None:
    events = MllpDecoder(max_frame=1000).feed(frame(b"a") + frame(b"b") + frame(b"c"))
    assert events == [Frame(b"a"), Frame(b"b"), Frame(b"c")]


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_frames_split_across_reads_at_any_point(cuts: list[int]) -> None:
    data = frame(MSG) + frame(b"second") + frame(MSG)
    dec = MllpDecoder(max_frame=1000)
    events = []
    pos = 0
    for cut in cuts:
        events += dec.feed(data[pos : pos + cut])
        pos += cut
    events += dec.feed(data[pos:])
    assert events == [Frame(MSG), Frame(b"second"), Frame(MSG)]
    assert dec.pending_bytes == 0


def test_oversize_frame_is_skipped_with_its_head_kept() -> None:
    dec = MllpDecoder(max_frame=100)
    big = MSG + b"|" + b"9" * 5000
    events = []
    for i in range(0, len(frame(big)), 700):
        events += dec.feed(frame(big)[i : i + 700])
    events += dec.feed(frame(b"next"))
    assert isinstance(events[0], Oversize)
    assert events[0].head.startswith(b"MSH|")
    assert events[0].size >= 5000
    assert events[1:] == [Frame(b"next")]
    assert dec.pending_bytes == 0


def test_oversize_buffer_does_not_grow_with_the_frame() -> None:
    dec = MllpDecoder(max_frame=100)
    dec.feed(b"\x0b" + b"x" * 50)
    for _ in range(100):
        dec.feed(b"x" * 1000)
    assert len(dec._buf) <= 1  # only a possible partial end block is held


def test_missing_start_block_is_reported() -> None:
    events = MllpDecoder(max_frame=1000).feed(MSG + b"\x1c\r" + frame(b"ok"))
    assert events == [Malformed(MSG, "missing MLLP start block"), Frame(b"ok")]


def test_frame_cut_short_by_a_new_start_block() -> None:
    events = MllpDecoder(max_frame=1000).feed(b"\x0bhalf" + frame(b"whole"))
    assert events == [Malformed(b"half", "frame cut short"), Frame(b"whole")]


def test_half_frame_is_pending() -> None:
    dec = MllpDecoder(max_frame=1000)
    assert dec.feed(b"\x0bMSH|partial") == []
    assert dec.pending_bytes == len(b"MSH|partial")
    assert dec.inside_frame


@given(
    st.binary(min_size=0, max_size=200).map(
        # mostly framing bytes, so starts, ends, stray ends and cut frames all occur
        lambda b: bytes(b"\x0b\x1c\rab"[x % 5] for x in b)
    ),
    st.lists(st.integers(min_value=1, max_value=30), max_size=40),
)
def test_any_bytes_split_anywhere_decode_as_in_one_read(data: bytes, cuts: list[int]) -> None:
    """The resumed search (each byte searched once) finds what one search of all bytes finds."""
    whole = MllpDecoder(max_frame=10_000)
    expected = whole.feed(data)
    dec = MllpDecoder(max_frame=10_000)
    events = []
    pos = 0
    for cut in cuts:
        events += dec.feed(data[pos : pos + cut])
        pos += cut
    events += dec.feed(data[pos:])
    assert events == expected
    assert dec.pending_bytes == whole.pending_bytes


def test_a_frame_fed_one_byte_at_a_time_resumes_its_search() -> None:
    dec = MllpDecoder(max_frame=100_000)
    body = MSG + b"|" + b"7" * 20_000
    wire = frame(body)
    assert [e for b in wire[:-1] for e in dec.feed(bytes([b]))] == []
    # everything held was searched already: the next read searches only its own bytes
    assert dec._scanned == len(dec._buf) == len(body) + 1  # the body and the FS
    assert dec.feed(wire[-1:]) == [Frame(body)]
    assert dec._scanned == 0 and dec.pending_bytes == 0
