"""Run an `MllpServer` on its own event loop in a background thread, for tests that talk
to it over real sockets from ordinary blocking code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from integration.mllp import MllpServer


@contextmanager
def serving(server: MllpServer) -> Iterator[int]:
    """Start `server`, yield its port, close it and its loop afterwards."""
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
