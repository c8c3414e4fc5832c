"""A small blocking MLLP client: send HL7 v2 messages, read and check their ACKs.

Also a command for tests and operators, run as a separate process:

    python -m integration.mllp_client --host 127.0.0.1 --port 2575 FILE.hl7...
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from integration.mllp_framing import Frame, MllpDecoder, frame


class MllpClientError(OSError):
    """No ACK came back (connection refused, closed or timed out)."""


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK (AA, AE, AR, CA, CE, CR), or "" if there is none."""
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"MSA"):
            fields = seg.split(seg[3:4] or b"|")
            return fields[1].decode("ascii", "replace") if len(fields) > 1 else ""
    return ""


class MllpClient:
    """One persistent connection; `send` writes one frame and waits for its ACK."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._decoder = MllpDecoder(max_frame=64 * 1024 * 1024)

    def __enter__(self) -> MllpClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        self._decoder = MllpDecoder(max_frame=64 * 1024 * 1024)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send_raw(self, data: bytes) -> None:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        self._sock.sendall(data)

    def read_ack(self) -> bytes:
        assert self._sock is not None
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                data = self._sock.recv(65536)
            except TimeoutError as exc:
                raise MllpClientError("no ACK before the timeout") from exc
            if not data:
                raise MllpClientError("connection closed before the ACK")
            for event in self._decoder.feed(data):
                if isinstance(event, Frame):
                    return event.payload
        raise MllpClientError("no ACK before the timeout")

    def send(self, message: bytes) -> bytes:
        """Send one message and return its ACK."""
        self.send_raw(frame(message))
        return self.read_ack()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m integration.mllp_client")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2575)
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    worst = 0
    with MllpClient(args.host, args.port) as client:
        for path in args.files:
            ack = client.send(path.read_bytes())
            code = ack_code(ack)
            print(f"{path}\t{code}")
            if code not in ("AA", "CA"):
                worst = 1
    return worst


if __name__ == "__main__":
    sys.exit(main())
