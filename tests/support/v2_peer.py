"""A tiny HL7 v2 MLLP peer, run as its own process: an EHR's result listener for tests.

It ACKs every message (MSA-2 = the message's MSH-10) with ``AA``, or with the codes queued
in a codes file (whitespace-separated, one used per message, then ``AA`` again), and
appends what it received to a JSON-lines file: ``{"control_id", "code", "message"}``.

    python -m tests.support.v2_peer --port 2576 --record received.jsonl --codes codes.txt

`V2Peer` starts it for a test (``with V2Peer(tmp_path) as peer: ... peer.received()``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from integration.mllp_framing import Frame, MllpDecoder, frame
from tests.support.processes import _Process, free_port, wait_until


def _msh10(message: bytes) -> str:
    msh = message.split(b"\r", 1)[0].decode("utf-8", "replace").split("|")
    return msh[9] if len(msh) > 9 else ""


def ack(message: bytes, code: str) -> bytes:
    """An ACK of `message` with MSA-1 `code`."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S%z")
    control_id = _msh10(message)
    text = "" if code in ("AA", "CA") else f"|test peer answers {code}"
    return (
        f"MSH|^~\\&|V2PEER|EHR|||{now}||ACK^R01^ACK|ACK{control_id}|P|2.5.1\r"
        f"MSA|{code}|{control_id}{text}"
    ).encode()


class _Handler(socketserver.BaseRequestHandler):
    server: PeerServer

    def handle(self) -> None:
        decoder = MllpDecoder(max_frame=64 * 1024 * 1024)
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            for event in decoder.feed(data):
                if isinstance(event, Frame):
                    self.request.sendall(frame(ack(event.payload, self.server.take(event.payload))))


class PeerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, *, record: Path, codes: Path) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.record = record
        self.codes = codes
        self.lock = threading.Lock()

    def take(self, message: bytes) -> str:
        """The code for this message (the next queued one, else AA); records the message."""
        with self.lock:
            queued = self.codes.read_text().split() if self.codes.exists() else []
            code = queued.pop(0) if queued else "AA"
            self.codes.write_text(" ".join(queued))
            line = {
                "control_id": _msh10(message),
                "code": code,
                "message": message.decode("utf-8"),
            }
            with open(self.record, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        return code


class V2Peer(_Process):
    """The peer as a child process on a free port; files under `folder`."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.record = folder / "received.jsonl"
        self.codes = folder / "codes.txt"
        argv = [sys.executable, "-m", "tests.support.v2_peer", "--port", str(self.port)]
        argv += ["--record", str(self.record), "--codes", str(self.codes)]
        super().__init__(argv, env=dict(os.environ), log_path=folder / "peer.log")

    def start(self) -> None:
        super().start()

        def listening() -> bool:
            if not self.alive():
                raise RuntimeError("v2 peer exited:\n" + self.log_tail())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(listening, timeout_s=20, what="v2 peer")

    def queue(self, *codes: str) -> None:
        """Answer the next messages with `codes`, in order (then AA)."""
        self.codes.write_text(" ".join(codes))

    def received(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(x) for x in self.record.read_text().splitlines() if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.v2_peer")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--record", type=Path, required=True)
    p.add_argument("--codes", type=Path, required=True)
    args = p.parse_args(argv)
    with PeerServer(args.port, record=args.record, codes=args.codes) as server:
        print(f"v2 peer listening on 127.0.0.1:{args.port}", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
