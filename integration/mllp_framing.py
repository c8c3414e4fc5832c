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
    """

    def __init__(self, *, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._in_frame = False
        self._skipping = False
        self._skip_head = b""
        self._skip_size = 0

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
                    del self._buf[: len(self._buf) - keep]
                    return events
                self._skip_size += end
                events.append(Oversize(self._skip_head, self._skip_size))
                del self._buf[: end + len(END)]
                self._skipping = False
                self._skip_head = b""
                self._skip_size = 0
                continue
            if not self._in_frame:
                start = self._buf.find(START)
                end = self._buf.find(END)
                if end >= 0 and (start < 0 or end < start):
                    stray = bytes(self._buf[:end]).strip()
                    del self._buf[: end + len(END)]
                    if stray:
                        events.append(Malformed(stray[:HEAD_BYTES], "missing MLLP start block"))
                    continue
                if start < 0:
                    if len(self._buf) > self.max_frame:
                        self._begin_skip(bytes(self._buf[:HEAD_BYTES]), len(self._buf))
                    return events
                del self._buf[: start + 1]
                self._in_frame = True
                continue
            end = self._buf.find(END)
            restart = self._buf.find(START)
            if restart >= 0 and (end < 0 or restart < end):
                events.append(Malformed(bytes(self._buf[:restart])[:HEAD_BYTES], "frame cut short"))
                del self._buf[: restart + 1]
                continue
            if end < 0:
                if len(self._buf) > self.max_frame:
                    self._begin_skip(bytes(self._buf[:HEAD_BYTES]), len(self._buf))
                    self._in_frame = False
                return events
            if end > self.max_frame:
                events.append(Oversize(bytes(self._buf[:HEAD_BYTES]), end))
            else:
                events.append(Frame(bytes(self._buf[:end])))
            del self._buf[: end + len(END)]
            self._in_frame = False

    def _begin_skip(self, head: bytes, size: int) -> None:
        keep = 1 if self._buf.endswith(END[:1]) else 0
        self._skipping = True
        self._skip_head = head
        self._skip_size = size - keep
        del self._buf[: len(self._buf) - keep]
