"""The asyncio MLLP listener over real TCP sockets (in-process server, real client socket):
several messages per connection, split and pipelined frames, oversize and broken frames
answered with a negative ACK while the connection stays open."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from integration.ingest import nak_for
from integration.mllp import MllpServer
from integration.mllp_client import MllpClient, ack_code
from integration.mllp_framing import frame
from mappers.hl7v2 import build_ack, parse_msh
from tests.support.mllp_thread import serving

MSG = b"MSH|^~\\&|CART|WARD|ECGBRIDGE||20261121120000||ORU^R01|M%d|P|2.5.1\rPID|1"


def echo_handler(message: bytes) -> bytes:
    """Answers AA to anything with a readable MSH (stands in for IngestService)."""
    return build_ack(parse_msh(message), "AA", control_id="A1", now=datetime.now(UTC))


def _server(idle_timeout_s: float) -> MllpServer:
    return MllpServer(
        handler=echo_handler,
        nak=nak_for,
        host="127.0.0.1",
        port=0,
        max_frame=10_000,
        idle_timeout_s=idle_timeout_s,
    )


@pytest.fixture
def port() -> Iterator[int]:
    """A listener whose idle timeout no test reaches, even on a starved machine (tests
    about framing must not turn into tests of the scheduler)."""
    with serving(_server(idle_timeout_s=120.0)) as p:
        yield p


@pytest.fixture
def short_idle_port() -> Iterator[int]:
    """A listener that closes connections silent for 1 s (the idle-timeout tests)."""
    with serving(_server(idle_timeout_s=1.0)) as p:
        yield p


def _msa2(ack: bytes) -> str:
    seg = next(s for s in ack.split(b"\r") if s.startswith(b"MSA"))
    return seg.split(b"|")[2].decode()


def test_several_messages_on_one_connection(port: int) -> None:
    with MllpClient("127.0.0.1", port, timeout_s=60) as c:
        for i in range(5):
            ack = c.send(MSG % i)
            assert ack_code(ack) == "AA" and _msa2(ack) == f"M{i}"


def test_pipelined_and_byte_by_byte_frames(port: int) -> None:
    with MllpClient("127.0.0.1", port, timeout_s=60) as c:
        c.send_raw(frame(MSG % 1) + frame(MSG % 2) + frame(MSG % 3))
        assert [_msa2(c.read_ack()) for _ in range(3)] == ["M1", "M2", "M3"]
        assert c._sock is not None
        c._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one segment per byte
        for b in frame(MSG % 4):
            c.send_raw(bytes([b]))
        assert _msa2(c.read_ack()) == "M4"
        assert _msa2(c.send(MSG % 5)) == "M5"  # and the connection is still in step


def test_oversize_frame_gets_ar_and_the_connection_stays_open(port: int) -> None:
    with MllpClient("127.0.0.1", port, timeout_s=60) as c:
        big = (MSG % 9) + b"\rOBX|1|NA|I||" + b"1^" * 20_000
        ack = c.send(big)
        assert ack_code(ack) == "AR"
        assert _msa2(ack) == "M9"
        assert b"exceeds" in ack
        assert ack_code(c.send(MSG % 10)) == "AA"


def test_garbage_and_missing_start_block_get_ar(port: int) -> None:
    with MllpClient("127.0.0.1", port, timeout_s=60) as c:
        c.send_raw(b"hello there\x1c\r")
        assert ack_code(c.read_ack()) == "AR"
        assert ack_code(c.send(MSG % 11)) == "AA"


def test_half_frame_then_silence_is_closed_after_idle_timeout(short_idle_port: int) -> None:
    with socket.create_connection(("127.0.0.1", short_idle_port), timeout=60) as s:
        s.sendall(b"\x0bMSH|^~\\&|half")
        assert s.recv(100) == b""  # closed by the server after the 1 s idle timeout
    with MllpClient("127.0.0.1", short_idle_port, timeout_s=60) as c:
        assert ack_code(c.send(MSG % 12)) == "AA"


def test_a_sender_that_never_reads_its_acks_is_closed(short_idle_port: int) -> None:
    """ACKs pile up unread until the socket buffers are full; the listener gives up on that
    connection after the idle timeout instead of waiting on it for ever."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up soon
        s.settimeout(60)
        s.connect(("127.0.0.1", short_idle_port))
        # reset or broken pipe once the listener drops it (not this socket's 60 s timeout)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            _flood(s, frame(MSG % 7) * 2000, times=200)
    with MllpClient("127.0.0.1", short_idle_port, timeout_s=60) as c:
        assert ack_code(c.send(MSG % 13)) == "AA"


def _flood(s: socket.socket, burst: bytes, *, times: int) -> None:
    for _ in range(times):
        s.sendall(burst)
