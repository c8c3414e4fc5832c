"""Asyncio MLLP listener for HL7 v2 messages.

Each connection is served in order: frames are decoded incrementally (`mllp_framing`),
each message goes through `IngestService.receive_hl7` in a worker thread (the inbox commit
blocks), and its ACK is written back before the next frame of that connection is handled.
A bad frame gets a negative ACK; the connection stays open for the next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from integration.mllp_framing import Frame, Malformed, MllpDecoder, Oversize, frame
from mappers.errors import MappingError

log = logging.getLogger(__name__)

Handler = Callable[[bytes], bytes | None]
READ_CHUNK = 64 * 1024


class _FrameTooLargeError(MappingError):
    """The frame is over the configured size cap (HL7 table 0357 code 207)."""

    hl7_code = 207
    ack_code = "AR"


class _FramingFaultError(MappingError):
    """Bytes that were not a well-formed MLLP frame."""

    hl7_code = 207
    ack_code = "AR"


NakBuilder = Callable[[bytes, MappingError], bytes]


def server_tls_context(*, cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ for the listener; with `client_ca`, peers must present a certificate
    issued by it (mutual TLS), else the handshake fails and nothing is read."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class MllpServer:
    """Serve HL7 over MLLP: `handler(message) -> ack` for each frame."""

    def __init__(
        self,
        *,
        handler: Handler,
        nak: NakBuilder,
        host: str,
        port: int,
        max_frame: int,
        idle_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._handler = handler
        self._nak = nak
        self._host = host
        self._port = port
        self._max_frame = max_frame
        self._idle_timeout_s = idle_timeout_s
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            self._host,
            self._port,
            limit=READ_CHUNK,
            ssl=self._ssl,
            ssl_handshake_timeout=30.0 if self._ssl else None,
        )
        log.info("MLLP listener on %s:%d", self._host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        decoder = MllpDecoder(max_frame=self._max_frame)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(
                        reader.read(READ_CHUNK), timeout=self._idle_timeout_s
                    )
                except TimeoutError:
                    log.info(
                        "MLLP connection %s idle for %.0f s; closed", peer, self._idle_timeout_s
                    )
                    return
                if not data:
                    if decoder.pending_bytes:
                        log.warning(
                            "MLLP connection %s closed inside a frame (%d bytes dropped)",
                            peer,
                            decoder.pending_bytes,
                        )
                    return
                for event in decoder.feed(data):
                    answer = await self._answer(event)
                    if answer is not None:
                        writer.write(frame(answer))
                        await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("MLLP connection %s lost: %s", peer, exc.__class__.__name__)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, event: Frame | Oversize | Malformed) -> bytes | None:
        if isinstance(event, Frame):
            return await asyncio.to_thread(self._handler, event.payload)
        if isinstance(event, Oversize):
            log.warning("MLLP frame of %d bytes over the %d-byte cap", event.size, self._max_frame)
            error: MappingError = _FrameTooLargeError(
                f"frame of {event.size} bytes exceeds the {self._max_frame}-byte limit"
            )
            return self._nak(event.head, error)
        log.warning("MLLP framing fault: %s", event.reason)
        return self._nak(event.head, _FramingFaultError(event.reason))
