"""Fault tests on real processes: no ECG lost, none analysed twice.

Each test runs its own redis-server, FHIR server (Medplum engine), `ecgbridge worker` and
`ecgbridge serve` (PostgreSQL inbox in a fresh database), breaks one of them at a known
point, and ends with the same check: every ECG accepted has exactly one DiagnosticReport on
the FHIR server, and the inbox shows it done.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from inference.registry import DEFAULT_WEIGHTS
from integration.mllp_client import MllpClient, MllpClientError, ack_code
from integration.pipeline import report_identity
from integration.samples import Sample, load_samples
from mappers.hl7v2 import build_oru_r01
from tests.support.fhir_server import FhirServerProcess
from tests.support.processes import (
    EcgbridgeServe,
    EcgbridgeWorker,
    RedisServer,
    ecgbridge_env,
    wait_until,
)
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

MODEL_VERSION = DEFAULT_WEIGHTS.meta.model_version


@dataclass
class Rig:
    tmp: Path
    redis: RedisServer
    fhir: FhirServerProcess
    proxy: TcpProxy
    env: dict[str, str]
    serve: EcgbridgeServe
    worker: EcgbridgeWorker
    sent: dict[str, bytes] = field(default_factory=dict)  # idempotency key -> message

    @property
    def fhir_via_proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}/fhir/R4"

    def new_worker(self, **extra_env: str) -> EcgbridgeWorker:
        env = self.env | {f"ECGBRIDGE_{k.upper()}": v for k, v in extra_env.items()}
        n = len(list(self.tmp.glob("worker*.log")))
        return EcgbridgeWorker(env, self.tmp / f"worker{n}.log")

    def new_serve(self, **extra_env: str) -> EcgbridgeServe:
        env = self.env | {
            "ECGBRIDGE_MLLP_PORT": str(self.serve.mllp_port),
            "ECGBRIDGE_HTTP_PORT": str(self.serve.http_port),
        }
        env |= {f"ECGBRIDGE_{k.upper()}": v for k, v in extra_env.items()}
        n = len(list(self.tmp.glob("serve*.log")))
        return EcgbridgeServe(env, self.tmp / f"serve{n}.log")

    def status(self, key: str) -> str:
        resp = httpx.get(f"{self.serve.http_url}/ecg", params={"key": key}, timeout=10)
        return str(resp.json()["status"]) if resp.status_code == 200 else "unknown"


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return load_samples()


def message_for(sample: Sample, control_id: str) -> bytes:
    return build_oru_r01(sample.record, control_id=control_id, now=datetime.now(UTC))


def send(rig: Rig, samples: list[Sample], n: int) -> list[str]:
    """Send n ECGs over one MLLP connection; return their idempotency keys."""
    keys = []
    with MllpClient("127.0.0.1", rig.serve.mllp_port, timeout_s=30) as client:
        for i in range(n):
            control_id = f"F{uuid.uuid4().hex[:12]}"
            message = message_for(samples[i % len(samples)], control_id)
            assert ack_code(client.send(message)) == "AA"
            key = f"hl7:WARD|{control_id}"
            rig.sent[key] = message
            keys.append(key)
    return keys


def assert_each_exactly_one_report(rig: Rig, *, timeout_s: float = 180) -> None:
    keys = list(rig.sent)
    wait_until(
        lambda: all(rig.status(k) == "done" for k in keys),
        timeout_s=timeout_s,
        what=f"{len(keys)} ECGs done ({[rig.status(k) for k in keys]})",
        interval_s=0.5,
    )
    base = rig.fhir.base_url
    for key in keys:
        rid = report_identity(key, MODEL_VERSION)
        found = httpx.get(
            f"{base}/DiagnosticReport",
            params={"identifier": f"urn:ecgbridge:report|{rid}"},
            timeout=10,
        ).json()
        assert len(found.get("entry") or []) == 1, key
    everything = httpx.get(f"{base}/DiagnosticReport", params={"_count": 1000}, timeout=10)
    assert len(everything.json().get("entry") or []) == len(keys)


@pytest.fixture
def rig(tmp_path: Path, fresh_postgres_url: str) -> Iterator[Rig]:
    with (
        RedisServer(tmp_path / "redis.log") as redis,
        FhirServerProcess() as fhir,
        TcpProxy("127.0.0.1", fhir.port) as proxy,
    ):
        env = ecgbridge_env(
            broker_url=redis.url,
            database_url=fresh_postgres_url,
            fhir_base_url=f"http://127.0.0.1:{proxy.port}/fhir/R4",
            fhir_timeout_s="5",
            data_dir=str(tmp_path / "var"),
            reconcile_interval_s="1",
            reconcile_after_s="6",
        )
        serve = EcgbridgeServe(env, tmp_path / "serve.log")
        worker = EcgbridgeWorker(env, tmp_path / "worker.log")
        rig = Rig(tmp_path, redis, fhir, proxy, env, serve, worker)
        try:
            yield rig
        finally:
            rig.serve.stop()
            rig.worker.stop()


def test_worker_killed_in_the_middle_of_inference(rig: Rig, samples: list[Sample]) -> None:
    rig.worker = rig.new_worker(failpoints="before_analysis=sleep:30")
    rig.worker.start()
    rig.serve.start()
    keys = send(rig, samples, 3)
    wait_until(lambda: rig.status(keys[0]) == "processing", timeout_s=60, what="processing")
    rig.worker.kill_group()
    rig.worker = rig.new_worker()
    rig.worker.start()
    assert_each_exactly_one_report(rig)


def test_worker_killed_in_the_middle_of_writeback(rig: Rig, samples: list[Sample]) -> None:
    rig.worker = rig.new_worker(failpoints="during_writeback=sleep:30")
    rig.worker.start()
    rig.serve.start()
    keys = send(rig, samples, 3)
    rid = report_identity(keys[0], MODEL_VERSION)

    def first_resources_written() -> bool:
        found = httpx.get(f"{rig.fhir.base_url}/Observation/{rid}-triage", timeout=5)
        return found.status_code == 200

    wait_until(first_resources_written, timeout_s=60, what="half-written report")
    rig.worker.kill_group()
    rig.worker = rig.new_worker()
    rig.worker.start()
    assert_each_exactly_one_report(rig)


def test_redis_restarted_while_messages_are_queued(rig: Rig, samples: list[Sample]) -> None:
    rig.serve.start()
    send(rig, samples, 4)  # no worker yet: all four wait in Redis
    port = rig.redis.port
    rig.redis.stop()
    rig.redis = RedisServer(rig.tmp / "redis2.log", port=port)
    rig.redis.start()  # empty: the queued messages are gone
    rig.worker.start()
    assert_each_exactly_one_report(rig)


def test_fhir_server_unreachable_for_30_s(rig: Rig, samples: list[Sample]) -> None:
    rig.worker.start()
    rig.serve.start()
    rig.proxy.stop()
    send(rig, samples, 4)
    time.sleep(30)
    rig.proxy.start()
    assert_each_exactly_one_report(rig, timeout_s=240)


def test_listener_killed_after_commit_before_ack(rig: Rig, samples: list[Sample]) -> None:
    rig.worker.start()
    rig.serve = rig.new_serve(failpoints="after_inbox_commit=kill")
    rig.serve.start()
    message = message_for(samples[3], "KILLED1")
    with (
        MllpClient("127.0.0.1", rig.serve.mllp_port, timeout_s=30) as client,
        pytest.raises(MllpClientError),
    ):
        client.send(message)
    wait_until(lambda: not rig.serve.alive(), timeout_s=10, what="listener dead")
    rig.serve = rig.new_serve()
    rig.serve.start()
    with MllpClient("127.0.0.1", rig.serve.mllp_port, timeout_s=30) as client:
        assert ack_code(client.send(message)) == "AA"  # the sender resends
    rig.sent["hl7:WARD|KILLED1"] = message
    assert_each_exactly_one_report(rig)


def test_same_message_replayed_100_times_serially_and_in_parallel(
    rig: Rig, samples: list[Sample]
) -> None:
    rig.worker.start()
    rig.serve.start()
    message = message_for(samples[4], "REPLAY1")
    rig.sent["hl7:WARD|REPLAY1"] = message
    with MllpClient("127.0.0.1", rig.serve.mllp_port, timeout_s=30) as client:
        serial = [client.send(message) for _ in range(100)]

    def ten_times(_: int) -> list[bytes]:
        with MllpClient("127.0.0.1", rig.serve.mllp_port, timeout_s=60) as client:
            return [client.send(message) for _ in range(10)]

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        parallel = [ack for acks in pool.map(ten_times, range(10)) for ack in acks]
    acks = serial + parallel
    assert len(acks) == 200
    assert ack_code(acks[0]) == "AA"
    assert all(a == acks[0] for a in acks)  # byte-identical stored ACK
    assert_each_exactly_one_report(rig)
