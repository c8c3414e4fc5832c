"""The worker's device and batching settings, and a real batching worker.

The settings tests are plain unit tests. The e2e test starts a real redis-server and a real
`ecgbridge worker` forced to batch on CPU (ECGBRIDGE_DEVICE=cpu, BATCH_MAX=4,
BATCH_WAIT_MS=20: a thread pool of 4 tasks sharing one batched model), queues the sample
ECGs through the real intake (HL7 v2, PostgreSQL inbox), and checks that every report equals
the unbatched analysis of the same stored ECG. Cheap: ndjson write-back, no explanations.
The CUDA path is not exercised here (no GPU in CI; MODEL_CARD.md, device and batching).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from inference.analyzer import Analyzer
from inference.batching import BatchingAnalyzer
from inference.errors import DeviceUnavailableError
from integration.audit import AuditLog
from integration.backfill import open_intake
from integration.inbox import Inbox, Status
from integration.ingest import decode_item
from integration.mllp_client import ack_code
from integration.samples import load_samples
from integration.settings import Settings, get_settings
from integration.tasks import load_worker_analyzer
from mappers.hl7v2 import build_oru_r01
from tests.support.processes import (
    EcgbridgeWorker,
    RedisServer,
    ecgbridge_env,
    run_cli,
    wait_until,
)

ATOL = 1e-5
NO_CUDA = not torch.cuda.is_available()


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


# -- settings ------------------------------------------------------------------------------
def test_device_setting_accepts_auto_cpu_cuda_and_names_itself_when_wrong() -> None:
    assert _settings().device == "auto"
    assert _settings(device="").device == "auto"
    assert _settings(device=" CUDA ").device == "cuda"
    with pytest.raises(ValidationError, match=r"ECGBRIDGE_DEVICE='gpu' is not a device; use one"):
        _settings(device="gpu")
    with pytest.raises(ValidationError, match="batch_max"):
        _settings(batch_max=0)


def test_batch_defaults_follow_the_device() -> None:
    s = _settings(worker_concurrency=3)
    assert (s.effective_batch_max("cpu"), s.effective_batch_wait_ms("cpu")) == (1, 0.0)
    assert (s.effective_batch_max("cuda"), s.effective_batch_wait_ms("cuda")) == (32, 10.0)
    assert s.worker_pool("cpu") == ("prefork", 3)  # unchanged on CPU
    assert s.worker_pool("cuda") == ("threads", 32)
    forced = _settings(batch_max=4, batch_wait_ms=20)
    assert forced.worker_pool("cpu") == ("threads", 4)
    assert forced.effective_batch_wait_ms("cpu") == 20.0
    # cuda without batching still avoids prefork (no fork after CUDA starts)
    assert _settings(batch_max=1).worker_pool("cuda") == ("threads", 1)
    # explanations are not batched: an explain-only worker keeps worker_concurrency
    assert s.worker_pool("cuda", queues="explain") == ("threads", 3)
    assert forced.worker_pool("cpu", queues="explain") == ("prefork", 1)


def test_worker_analyzer_is_batched_only_when_batching() -> None:
    plain = load_worker_analyzer(_settings(device="cpu"))
    assert type(plain) is Analyzer and plain.device == "cpu"
    batched = load_worker_analyzer(_settings(device="cpu", batch_max=4, batch_wait_ms=20))
    assert isinstance(batched, BatchingAnalyzer)
    try:
        assert (batched.batcher.max_batch, batched.batcher.wait_ms) == (4, 20.0)
    finally:
        batched.close()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_fails_naming_the_setting() -> None:
    with pytest.raises(DeviceUnavailableError, match=r"ECGBRIDGE_DEVICE=cuda: .*no CUDA device"):
        _settings(device="cuda").inference_device()
    assert _settings(device="auto").inference_device() == "cpu"


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
def test_worker_refuses_to_start_on_cuda_without_a_gpu(tmp_path: Path) -> None:
    env = ecgbridge_env(device="cuda", data_dir=str(tmp_path / "var"))
    done = run_cli("worker", env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "ECGBRIDGE_DEVICE=cuda" in done.stderr
    assert "no CUDA device" in done.stderr


# -- a real batching worker ----------------------------------------------------------------
def _assert_close(got: object, want: object, where: str = "") -> None:
    if isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, float), where
        assert got == pytest.approx(want, abs=ATOL), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.e2e
@pytest.mark.postgres
def test_batching_worker_reports_equal_the_unbatched_analysis(
    tmp_path: Path, fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = load_samples()
    with RedisServer(tmp_path / "redis.log") as redis:
        env = ecgbridge_env(
            broker_url=redis.url,
            database_url=fresh_postgres_url,
            data_dir=str(tmp_path / "var"),
            out_dir=str(tmp_path / "out"),
            writeback_mode="ndjson",
            device="cpu",
            batch_max="4",
            batch_wait_ms="20",
        )
        for key, value in env.items():  # this process's intake and audit log see the same
            if key.startswith("ECGBRIDGE_"):
                monkeypatch.setenv(key, value)
        for key in os.environ:
            if key.startswith("ECGBRIDGE_") and key not in env:
                monkeypatch.delenv(key)
        settings = get_settings()
        # Queue every ECG before the worker starts: its 4 task threads take 4 at once.
        keys = []
        with open_intake(settings, priority=5) as intake:
            for sample in samples:
                control_id = f"B{uuid.uuid4().hex[:12]}"
                message = build_oru_r01(sample.record, control_id=control_id, now=datetime.now(UTC))
                assert ack_code(intake.receive_hl7(message) or b"") == "AA"
                keys.append(f"hl7:WARD|{control_id}")
        audit = AuditLog.from_settings()
        inbox = Inbox.from_url(settings.effective_database_url, cipher=audit.cipher)
        try:
            worker = EcgbridgeWorker(env, tmp_path / "worker.log", queues="triage")
            with worker:

                def all_done() -> bool:
                    assert worker.alive(), worker.log_tail()
                    items = [inbox.find_by_key(k) for k in keys]
                    return all(i is not None and i.status is Status.DONE for i in items)

                wait_until(all_done, timeout_s=180, what=f"{len(keys)} ECGs done")
            log_text = (tmp_path / "worker.log").read_text(errors="replace")
            items = [inbox.find_by_key(k) for k in keys]
        finally:
            inbox.dispose()
            audit.close()

    assert "threads pool x 4, batches of up to 4 ECGs, wait 20 ms" in log_text
    assert f"batcher closed: {len(keys)} ECGs in" in log_text  # the clean shutdown ran
    analyzer = Analyzer.load(device="cpu")
    for item in items:
        assert item is not None and item.result_json is not None
        got = json.loads(item.result_json)
        want = analyzer.analyze(decode_item(item)).to_json()
        for volatile in ("analysed_at", "timings_ms"):
            got.pop(volatile, None)
            want.pop(volatile, None)
        _assert_close(got, want, item.idem_key)
    reports = (tmp_path / "out" / "DiagnosticReport.ndjson").read_text().splitlines()
    assert len(reports) == len(keys)
