"""The running ecgbridge stack that end-to-end tests drive: `ecgbridge serve` and its broker and
worker (a throw-away `redis-server` and a separate `ecgbridge worker` process, or the embedded
broker with the worker inside serve), optionally the Medplum-based FHIR server, all logging and
keeping their files under one temporary folder.

Usage::

    with ecgbridge_stack(tmp, fhir=True, database_url=url, explain="true") as stack:
        httpx.get(f"{stack.serve.http_url}/health")

Each test keeps its own settings (keyword arguments, as `ecgbridge_env` takes them); the
stack fills in only what it owns: ``broker_url``, ``fhir_base_url``, ``data_dir`` and
``out_dir`` (under `tmp`), each unless given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.support.fhir_server import FhirServerProcess
from tests.support.processes import (
    EcgbridgeServe,
    EcgbridgeWorker,
    RedisServer,
    ecgbridge_env,
    setting_vars,
)


@dataclass(frozen=True)
class EcgbridgeStack:
    """The started processes, and the environment serve and worker share."""

    tmp: Path
    env: dict[str, str]
    serve: EcgbridgeServe
    #: None with the embedded broker (the worker runs inside serve).
    worker: EcgbridgeWorker | None
    redis: RedisServer | None
    fhir: FhirServerProcess | None

    def require_worker(self) -> EcgbridgeWorker:
        if self.worker is None:
            raise RuntimeError("this stack has no separate worker (broker='embedded')")
        return self.worker

    def require_fhir(self) -> FhirServerProcess:
        if self.fhir is None:
            raise RuntimeError("this stack has no FHIR server (fhir=False)")
        return self.fhir


@contextmanager
def ecgbridge_stack(
    tmp: Path,
    *,
    broker: Literal["redis", "embedded"] = "redis",
    fhir: bool = False,
    fhir_profiles_dir: Path | None = None,
    worker_settings: Mapping[str, str] | None = None,
    serve_settings: Mapping[str, str] | None = None,
    **settings: str,
) -> Iterator[EcgbridgeStack]:
    """Start the stack under `tmp`, yield it, and stop it (last started, first stopped).

    broker: ``"redis"`` starts a `redis-server` and a separate `ecgbridge worker`;
    ``"embedded"`` runs ``ecgbridge serve --worker`` on its on-disk broker.
    fhir: start a FHIR server (enforcing the profiles in `fhir_profiles_dir`, when given) and
    point ``fhir_base_url`` at it.
    worker_settings / serve_settings: settings for that one process only.
    settings: the rest, for both (explanations and report pictures stay off unless given).
    """
    if fhir_profiles_dir is not None and not fhir:
        raise ValueError("fhir_profiles_dir is for the FHIR server the stack starts: add fhir=True")
    if broker not in ("redis", "embedded"):
        raise ValueError(f"broker must be 'redis' or 'embedded', not {broker!r}")
    with ExitStack() as started:
        redis = started.enter_context(RedisServer(tmp / "redis.log")) if broker == "redis" else None
        server = (
            started.enter_context(FhirServerProcess(profiles_dir=fhir_profiles_dir))
            if fhir
            else None
        )
        owned: dict[str, str] = {
            "data_dir": str(tmp / "var"),
            "out_dir": str(tmp / "var" / "out"),
        }
        if redis is not None:
            owned["broker_url"] = redis.url
        if server is not None:
            owned["fhir_base_url"] = server.base_url
        env = ecgbridge_env(**(owned | settings))
        worker = None
        if broker == "redis":
            worker = started.enter_context(
                EcgbridgeWorker(env | setting_vars(worker_settings or {}), tmp / "worker.log")
            )
        serve = started.enter_context(
            EcgbridgeServe(
                env | setting_vars(serve_settings or {}),
                tmp / "serve.log",
                worker=broker == "embedded",
            )
        )
        yield EcgbridgeStack(tmp, env, serve, worker, redis, server)
