"""Bad input at the MLLP listener, against a real `ecgbridge serve` process (SQLite inbox,
on-disk broker): a sender that sends garbage, half a frame then silence, a 100 MiB frame,
and 1,000 idle connections. In each case the listener stays up, a good ORU^R01 from another
connection gets its AA while the bad sender is at it, and the case is logged once for that
connection (counted in the process's log), never once per read or per frame.

The listener runs with a 3 s idle timeout and a 1 MiB frame cap; its memory is read from
/proc/<pid>/status (the 100 MiB frame must be skipped, not buffered).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from integration.mllp_client import MllpClient, ack_code
from integration.mllp_framing import Frame, MllpDecoder
from integration.samples import Sample, load_samples
from mappers.hl7v2 import build_oru_r01
from tests.support.processes import EcgbridgeServe, ecgbridge_env, wait_until

pytestmark = pytest.mark.e2e  # starts `ecgbridge serve`

IDLE_S = 3.0
MAX_FRAME = 1024 * 1024
MiB = 1024 * 1024
IDLE_CONNECTIONS = 1000
#: A good sender's ACK must come within this, whatever the bad one is doing.
PROMPT_S = 20.0


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return load_samples()


def ensure_open_files(n: int) -> None:
    """Raise this process's soft open-files limit to `n` when it is lower (children started
    afterwards inherit it); skip when the hard limit does not allow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"open-files hard limit {hard} < {n}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EcgbridgeServe]:
    # 1,000 client sockets here and 1,000 accepted ones in the listener, plus their files
    ensure_open_files(IDLE_CONNECTIONS + 1500)
    tmp = tmp_path_factory.mktemp("mllp_abuse")
    env = ecgbridge_env(
        data_dir=str(tmp / "var"),
        mllp_idle_timeout_s=str(IDLE_S),
        mllp_max_frame_bytes=str(MAX_FRAME),
    )
    with EcgbridgeServe(env, tmp / "serve.log") as s:
        yield s


def good_ack(serve: EcgbridgeServe, sample: Sample) -> None:
    """A well-behaved sender on its own connection gets AA for a real ECG."""
    control_id = "GOOD" + uuid.uuid4().hex[:12]
    message = build_oru_r01(sample.record, control_id=control_id, now=datetime.now(UTC))
    with MllpClient("127.0.0.1", serve.mllp_port, timeout_s=PROMPT_S) as client:
        ack = client.send(message)
    assert ack_code(ack) == "AA", ack
    assert control_id.encode() in ack


def still_up(serve: EcgbridgeServe) -> None:
    assert serve.alive(), serve.log_tail()
    assert httpx.get(f"{serve.http_url}/health", timeout=10).status_code == 200


def lines_about(serve: EcgbridgeServe, local_port: int) -> list[str]:
    """The listener's log messages about the connection from `local_port`."""
    tag = f"MLLP connection 127.0.0.1:{local_port}:"
    out = []
    for raw in serve.log_path.read_text(errors="replace").splitlines():
        try:
            message = str(json.loads(raw).get("message", ""))
        except (json.JSONDecodeError, AttributeError):
            message = raw
        if tag in message:
            out.append(message)
    return out


def read_frames(sock: socket.socket, n: int) -> list[bytes]:
    decoder = MllpDecoder(max_frame=MiB)
    frames: list[bytes] = []
    while len(frames) < n:
        data = sock.recv(65536)
        assert data, f"closed after {len(frames)} of {n} answers"
        frames += [e.payload for e in decoder.feed(data) if isinstance(e, Frame)]
    return frames


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def test_garbage_gets_ar_and_is_logged_once(serve: EcgbridgeServe, samples: list[Sample]) -> None:
    junk = os.urandom(200_000).translate(bytes.maketrans(b"\x0b\x1c", b"xy"))
    with socket.create_connection(("127.0.0.1", serve.mllp_port), timeout=60) as bad:
        port = bad.getsockname()[1]
        bad.sendall(junk + b"\x1c\r")  # no start block: a framing fault
        good_ack(serve, samples[0])
        bad.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x1c\r")  # and another
        naks = read_frames(bad, 2)
        assert [ack_code(n) for n in naks] == ["AR", "AR"]
        assert all(b"missing MLLP start block" in n for n in naks)
    still_up(serve)
    wait_until(lambda: bool(lines_about(serve, port)), timeout_s=10, what="garbage logged")
    lines = lines_about(serve, port)
    assert len(lines) == 1 and "framing fault" in lines[0], lines


def test_half_frame_then_silence_is_closed_and_logged_once(
    serve: EcgbridgeServe, samples: list[Sample]
) -> None:
    with socket.create_connection(("127.0.0.1", serve.mllp_port), timeout=60) as half:
        port = half.getsockname()[1]
        half.sendall(b"\x0bMSH|^~\\&|CART|WARD|ECGBRIDGE||20261121120000||ORU^R01|HALF1|P")
        good_ack(serve, samples[1])
        t0 = time.monotonic()
        assert half.recv(100) == b""  # closed by the listener, not answered
        assert time.monotonic() - t0 < IDLE_S + 30  # by the idle timeout, not by chance
    still_up(serve)
    lines = lines_about(serve, port)
    assert len(lines) == 1 and "half a frame" in lines[0], lines


def test_100_mib_frame_is_skipped_with_bounded_memory(
    serve: EcgbridgeServe, samples: list[Sample]
) -> None:
    assert serve.proc is not None
    pid = serve.proc.pid
    good_ack(serve, samples[2])  # warm: the first ECG's parse allocates for good
    rss0 = vm_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM, the peak RSS, to now
    head = b"\x0bMSH|^~\\&|CART|WARD|ECGBRIDGE||20261121120000||ORU^R01|BIG1|P|2.5.1\rOBX|1|NA|"
    chunk = b"1^" * (32 * 1024)  # 64 KiB
    halfway = threading.Event()
    resume = threading.Event()
    failure: list[BaseException] = []
    peak_rss = [rss0]

    def send_100_mib(sock: socket.socket) -> None:
        try:
            sock.sendall(head)
            for i in range(100 * MiB // len(chunk)):
                if i == 50 * MiB // len(chunk):
                    halfway.set()
                    resume.wait(120)
                sock.sendall(chunk)
            sock.sendall(b"\x1c\r")
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)
            halfway.set()

    with socket.create_connection(("127.0.0.1", serve.mllp_port), timeout=120) as big:
        port = big.getsockname()[1]
        sender = threading.Thread(target=send_100_mib, args=(big,), daemon=True)
        sender.start()
        assert halfway.wait(120)
        peak_rss.append(vm_kib(pid, "VmRSS"))
        good_ack(serve, samples[3])  # 50 MiB into the big frame
        resume.set()
        while sender.is_alive():
            peak_rss.append(vm_kib(pid, "VmRSS"))
            sender.join(0.05)
        assert not failure, failure
        [nak] = read_frames(big, 1)
        assert ack_code(nak) == "AR"
        assert b"BIG1" in nak and b"exceeds the 1048576-byte limit" in nak
        # the connection stays usable for the next message
        big.sendall(
            b"\x0b"
            + build_oru_r01(samples[4].record, control_id="AFTERBIG1", now=datetime.now(UTC))
            + b"\x1c\r"
        )
        [after] = read_frames(big, 1)
        assert ack_code(after) == "AA"
    growth_mib = (max(vm_kib(pid, "VmHWM"), *peak_rss) - rss0) / 1024
    assert growth_mib < 30, f"listener RSS grew {growth_mib:.1f} MiB for a 100 MiB frame"
    still_up(serve)
    lines = lines_about(serve, port)
    assert len(lines) == 1 and "over the 1048576-byte cap" in lines[0], lines


def test_1000_idle_connections_are_closed_after_the_idle_timeout(
    serve: EcgbridgeServe, samples: list[Sample]
) -> None:
    idle = [
        socket.create_connection(("127.0.0.1", serve.mllp_port), timeout=60)
        for _ in range(IDLE_CONNECTIONS)
    ]
    try:
        ports = [s.getsockname()[1] for s in idle]
        good_ack(serve, samples[5])  # served while 1,000 connections sit idle
        still_up(serve)
        for s in idle:
            assert s.recv(1) == b""  # each closed by the listener after its idle timeout
    finally:
        for s in idle:
            s.close()
    still_up(serve)
    per_port: dict[int, int] = dict.fromkeys(ports, 0)
    tags = {f"MLLP connection 127.0.0.1:{p}:": p for p in ports}
    for raw in serve.log_path.read_text(errors="replace").splitlines():
        if "idle for" in raw:
            for tag, p in tags.items():
                if tag in raw:
                    per_port[p] += 1
    assert set(per_port.values()) == {1}, sorted(per_port.items(), key=lambda kv: kv[1])[:5]
