"""A small blocking MLLP client: send HL7 v2 messages, read and check their ACKs.

Also a command for tests and operators, run as a separate process:

    python -m integration.mllp_client --host 127.0.0.1 --port 2575 FILE.hl7...
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from integration.mllp_framing import Frame, MllpDecoder, frame


class MllpClientError(OSError):
    """No ACK came back (connection refused, closed or timed out)."""


class AckRejectedError(MllpClientError):
    """The peer answered with a negative ACK (AE, AR, CE, CR)."""

    def __init__(self, code: str, ack: bytes) -> None:
        super().__init__(f"peer answered {code}")
        self.code = code
        self.ack = ack


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK (AA, AE, AR, CA, CE, CR), or "" if there is none."""
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"MSA"):
            fields = seg.split(seg[3:4] or b"|")
            return fields[1].decode("ascii", "replace") if len(fields) > 1 else ""
    return ""


class MllpClient:
    """One persistent connection; `send` writes one frame and waits for its ACK."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._decoder = MllpDecoder(max_frame=64 * 1024 * 1024)

    def __enter__(self) -> MllpClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        self._sock = sock
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

    def deliver(
        self,
        message: bytes,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bytes:
        """Send until the peer accepts: reconnect and resend the same message (same MSH-10,
        so a receiver that stored it answers with its stored ACK) when the connection fails
        or times out, with doubling backoff. Returns the AA/CA ACK; raises `AckRejectedError`
        for AE/AR/CE/CR (resending cannot help) and `MllpClientError` when attempts run out.
        """
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                ack = self.send(message)
            except OSError as exc:  # MllpClientError, refused, reset, timeout
                last = exc
                self.close()
                sleep(backoff_s * 2**attempt)
                continue
            code = ack_code(ack)
            if code in ("AA", "CA"):
                return ack
            raise AckRejectedError(code, ack)
        raise MllpClientError(f"no ACK after {attempts} attempts: {last}")


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
