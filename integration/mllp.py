"""Asyncio MLLP listener for HL7 v2 messages.

Each connection is served in order: frames are decoded incrementally (`mllp_framing`),
each message goes through `IngestService.receive_hl7` in a worker thread (the inbox commit
blocks), and its ACK is written back before the next frame of that connection is handled.
A bad frame gets a negative ACK; the connection stays open for the next message.

Bad input costs one connection, never the listener: a frame over ``max_frame`` is skipped
unread (memory stays bounded) and answered AR; a connection silent for ``idle_timeout_s``
(half a frame, garbage, or nothing) or not reading its ACKs for as long is closed; and each
kind of trouble is logged once per connection (peer address, sizes; never message content).
"""

from __future__ import annotations

import asyncio
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
        self._connections: set[asyncio.Task[None]] = set()

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

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    async def close(self) -> None:
        """Stop accepting, then end the connections still open."""
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _ConnectionLog(_peer_name(writer))
        decoder = MllpDecoder(max_frame=self._max_frame)
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(
                        reader.read(READ_CHUNK), timeout=self._idle_timeout_s
                    )
                except TimeoutError:
                    self._log_silence(conn, decoder)
                    return
                if not data:
                    if decoder.pending_bytes:
                        conn.once(
                            "half-frame",
                            logging.WARNING,
                            "closed by the peer inside a frame (%d bytes dropped)",
                            decoder.pending_bytes,
                        )
                    return
                for event in decoder.feed(data):
                    answer = await self._answer(event, conn)
                    if answer is None:
                        continue
                    writer.write(frame(answer))
                    try:
                        # a peer that never reads its ACKs must not hold the connection
                        await asyncio.wait_for(writer.drain(), timeout=self._idle_timeout_s)
                    except TimeoutError:  # only the drain: not a timeout inside the handler
                        conn.once(
                            "stalled",
                            logging.WARNING,
                            "read no ACK for %.0f s; closed",
                            self._idle_timeout_s,
                        )
                        writer.transport.abort()  # drop the unread ACKs: close would wait
                        return
        except (ConnectionError, OSError) as exc:
            conn.once("lost", logging.INFO, "lost: %s", exc.__class__.__name__)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), timeout=self._idle_timeout_s)
            except TimeoutError:
                writer.transport.abort()  # the peer takes no more bytes
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass

    def _log_silence(self, conn: _ConnectionLog, decoder: MllpDecoder) -> None:
        """The one line for a connection closed after `idle_timeout_s` of silence."""
        if decoder.inside_frame:
            conn.once(
                "half-frame",
                logging.WARNING,
                "half a frame (%d bytes) then %.0f s of silence; closed",
                decoder.pending_bytes,
                self._idle_timeout_s,
            )
        elif decoder.pending_bytes:
            conn.once(
                "garbage",
                logging.WARNING,
                "%d bytes outside any MLLP frame then %.0f s of silence; closed",
                decoder.pending_bytes,
                self._idle_timeout_s,
            )
        else:
            conn.once("idle", logging.INFO, "idle for %.0f s; closed", self._idle_timeout_s)

    async def _answer(
        self, event: Frame | Oversize | Malformed, conn: _ConnectionLog
    ) -> bytes | None:
        if isinstance(event, Frame):
            return await asyncio.to_thread(self._handler, event.payload)
        if isinstance(event, Oversize):
            conn.once(
                "oversize",
                logging.WARNING,
                "frame of %d bytes over the %d-byte cap, skipped unread; answered AR",
                event.size,
                self._max_frame,
            )
            error: MappingError = _FrameTooLargeError(
                f"frame of {event.size} bytes exceeds the {self._max_frame}-byte limit"
            )
            return self._nak(event.head, error)
        conn.once("garbage", logging.WARNING, "framing fault (%s); answered AR", event.reason)
        return self._nak(event.head, _FramingFaultError(event.reason))


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class _ConnectionLog:
    """Logs each kind of trouble once per connection: a sender stuck in a loop of broken
    frames costs one log line, not one per frame or per read."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self._seen: set[str] = set()

    def once(self, case: str, level: int, message: str, *args: object) -> None:
        if case in self._seen:
            return
        self._seen.add(case)
        suffix = "" if case in ("idle", "lost", "stalled", "half-frame") else " (logged once)"
        log.log(level, "MLLP connection %s: " + message + suffix, self.peer, *args)
