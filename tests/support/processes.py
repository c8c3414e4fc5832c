"""Real server processes for end-to-end tests: redis-server, `ecgbridge serve`, `ecgbridge
worker`. Each is a context manager that starts the process, waits until it answers, and
stops it (SIGTERM, then SIGKILL) on exit. Their output goes to a log file for failures."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], *, timeout_s: float, what: str, interval_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class _Process:
    """A child process with its output in `log_path`."""

    def __init__(self, argv: list[str], *, env: Mapping[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # its own process group, so kill_group reaches children
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill_group(self) -> None:
        """SIGKILL the process and all its children at once (a crashed container)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer(_Process):
    """A throw-away `redis-server` on a free port (no persistence)."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (make system-deps installs it)")
        self.port = port or free_port()
        argv = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        super().__init__(argv, env=os.environ, log_path=log_path)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        super().start()

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(pong, timeout_s=20, what="redis-server")


#: Explanations and pictures cost 1-2 s of CPU per ECG; tests about queues, faults and load
#: turn them off unless they say otherwise (tests/e2e/test_foundation_e2e.py runs them on).
_FAST = {"explain": "false", "report_png": "false", "report_pdf": "false"}


def setting_vars(settings: Mapping[str, str]) -> dict[str, str]:
    """Settings by name (``otel_file``) as the environment variables that set them
    (``ECGBRIDGE_OTEL_FILE``)."""
    return {f"ECGBRIDGE_{k.upper()}": v for k, v in settings.items()}


def ecgbridge_env(**settings: str) -> dict[str, str]:
    """The environment for an ecgbridge child: this one without ECGBRIDGE_*, plus settings
    (explanations and report pictures off unless given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGBRIDGE_")}
    env.update(setting_vars(_FAST | settings))
    return env


def run_cli(
    *args: str, env: Mapping[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``ecgbridge ARGS`` (``python -m integration.cli``) to its end in the repository
    root; its exit code and output, as text, for the test to judge."""
    return subprocess.run(
        [sys.executable, "-m", "integration.cli", *args],
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class EcgbridgeServe(_Process):
    """`ecgbridge serve` (MLLP + HTTP listeners) on free ports."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, worker: bool = False) -> None:
        self.mllp_port = int(env.get("ECGBRIDGE_MLLP_PORT") or free_port())
        self.http_port = int(env.get("ECGBRIDGE_HTTP_PORT") or free_port())
        full = dict(env) | {
            "ECGBRIDGE_MLLP_PORT": str(self.mllp_port),
            "ECGBRIDGE_HTTP_PORT": str(self.http_port),
        }
        argv = [sys.executable, "-m", "integration.cli", "serve"] + (["--worker"] if worker else [])
        super().__init__(argv, env=full, log_path=log_path)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        super().start()

        def healthy() -> bool:
            if not self.alive():
                raise RuntimeError("ecgbridge serve exited:\n" + self.log_tail())
            try:
                return httpx.get(f"{self.http_url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout_s=90, what="ecgbridge serve /health")


class EcgbridgeWorker(_Process):
    """`ecgbridge worker` (a real Celery worker process)."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, queues: str = "all") -> None:
        super().__init__(
            [sys.executable, "-m", "integration.cli", "worker", "--queues", queues],
            env=env,
            log_path=log_path,
        )

    def start(self) -> None:
        super().start()

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError("ecgbridge worker exited:\n" + self.log_tail())
            return "ready." in self.log_path.read_text(errors="replace")

        wait_until(ready, timeout_s=90, what="celery worker ready")
