"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2): <VT> message <FS><CR>.

A pure, incremental decoder: feed it whatever a TCP read returned, get back complete frames
and framing faults. No I/O, so it is tested byte by byte.
"""

from __future__ import annotations

from dataclasses import dataclass

START = b"\x0b"
END = b"\x1c\x0d"
#: Bytes kept from the start of an oversized frame, enough to read its MSH for the NAK.
HEAD_BYTES = 2048


def frame(message: bytes) -> bytes:
    """Wrap one HL7 message in an MLLP frame."""
    return START + message + END


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete message (without the framing bytes)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Oversize:
    """A frame larger than the cap; only its first bytes were kept (for the MSH)."""

    head: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Malformed:
    """Bytes that ended like a frame but did not start like one, or a frame cut short by
    a new start block. `head` holds the start of the bytes, for the MSH if there is one."""

    head: bytes
    reason: str


Event = Frame | Oversize | Malformed


class MllpDecoder:
    """Incremental MLLP decoder with a frame-size cap.

    Bytes outside a frame are collected until an end block shows up (reported as
    `Malformed`, so the sender still gets an answer); a frame over `max_frame` bytes is
    skipped to its end block without buffering it and reported as `Oversize`.

    Each byte is searched once: a frame trickled in one byte per read costs linear, not
    quadratic, time (the search resumes where the last one stopped).
    """

    def __init__(self, *, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._in_frame = False
        self._skipping = False
        self._skip_head = b""
        self._skip_size = 0
        #: Bytes of `_buf` already searched for a start and an end block (found neither).
        self._scanned = 0

    @property
    def inside_frame(self) -> bool:
        """Whether the bytes held (or skipped) are part of a started frame."""
        return self._in_frame or self._skipping

    @property
    def pending_bytes(self) -> int:
        """Bytes held for an unfinished frame (a half frame when the peer goes quiet)."""
        return len(self._buf) + self._skip_size

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        self._buf += data
        while True:
            if self._skipping:
                end = self._buf.find(END)
                if end < 0:
                    keep = 1 if self._buf.endswith(END[:1]) else 0
                    self._skip_size += len(self._buf) - keep
                    self._consume(len(self._buf) - keep)
                    return events
                self._skip_size += end
                events.append(Oversize(self._skip_head, self._skip_size))
                self._consume(end + len(END))
                self._skipping = False
                self._skip_head = b""
                self._skip_size = 0
                continue
            # resume the search where the last one stopped (one byte back: an end block
            # split across reads)
            start = self._buf.find(START, self._scanned)
            end = self._buf.find(END, max(0, self._scanned - 1))
            if not self._in_frame:
                if end >= 0 and (start < 0 or end < start):
                    stray = bytes(self._buf[:end]).strip()
                    self._consume(end + len(END))
                    if stray:
                        events.append(Malformed(stray[:HEAD_BYTES], "missing MLLP start block"))
                    continue
                if start < 0:
                    if len(self._buf) > self.max_frame:
                        self._begin_skip(bytes(self._buf[:HEAD_BYTES]), len(self._buf))
                    else:
                        self._scanned = len(self._buf)
                    return events
                self._consume(start + 1)
                self._in_frame = True
                continue
            if start >= 0 and (end < 0 or start < end):
                events.append(Malformed(bytes(self._buf[:start])[:HEAD_BYTES], "frame cut short"))
                self._consume(start + 1)
                continue
            if end < 0:
                if len(self._buf) > self.max_frame:
                    self._begin_skip(bytes(self._buf[:HEAD_BYTES]), len(self._buf))
                    self._in_frame = False
                else:
                    self._scanned = len(self._buf)
                return events
            if end > self.max_frame:
                events.append(Oversize(bytes(self._buf[:HEAD_BYTES]), end))
            else:
                events.append(Frame(bytes(self._buf[:end])))
            self._consume(end + len(END))
            self._in_frame = False

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._scanned = 0

    def _begin_skip(self, head: bytes, size: int) -> None:
        keep = 1 if self._buf.endswith(END[:1]) else 0
        self._skipping = True
        self._skip_head = head
        self._skip_size = size - keep
        self._consume(len(self._buf) - keep)
