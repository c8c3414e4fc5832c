"""The dynamic batcher (`inference.batching`): real threads, the real CPU model.

Callers in many threads each get exactly their own result (for the analyzer: the same
probabilities as `Analyzer.analyze`, to 1e-5), batches form under concurrent load, one bad
item fails only its own caller, timeouts and a full queue give their own errors, and `close`
finishes the queued work and leaves no thread behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from inference.analyzer import Analyzer
from inference.batching import (
    BatcherClosedError,
    BatcherFullError,
    BatchingAnalyzer,
    BatchTimeoutError,
    DynamicBatcher,
)
from inference.errors import EcgValidationError
from inference.record import LEADS_12, EcgRecord
from inference.result import AnalysisResult

ATOL = 1e-5


class Recorder:
    """A batch function that squares numbers, remembers each batch, and refuses negatives
    (the whole batch raises, as a model call does on one bad record)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.threads: set[str] = set()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        time.sleep(self.delay_s)
        bad = [i for i in items if i < 0]
        if bad:
            raise ValueError(f"negative item {bad[0]}")
        return [i * i for i in items]


def concurrently(n: int, call: Callable[[int], object]) -> list[object]:
    """Run call(0..n-1) from n threads released together; results (or exceptions) in order."""
    barrier = threading.Barrier(n)

    def one(i: int) -> object:
        barrier.wait()
        try:
            return call(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def _probs(result: AnalysisResult) -> dict[str, float]:
    assert result.triage is not None
    out = {"mi": result.triage.probability}
    out |= {f.territory: f.probability for f in result.territories}
    out |= {f.code: f.probability for f in result.rhythms}
    if result.ischemia is not None:
        out["ischemia"] = result.ischemia.probability
    return out


def test_each_caller_gets_its_own_result_and_batches_form() -> None:
    fn = Recorder(delay_s=0.02)
    with DynamicBatcher(fn, max_batch=8, wait_ms=50) as batcher:
        results = concurrently(32, lambda i: batcher.run(i, timeout_s=30))
        stats = batcher.stats()
    assert results == [i * i for i in range(32)]
    assert sorted(i for b in fn.batches for i in b) == list(range(32))
    assert max(len(b) for b in fn.batches) == 8  # full batches formed
    assert all(len(b) <= 8 for b in fn.batches)
    assert stats.items == 32 and stats.batches == len(fn.batches) < 32
    assert sum(size * n for size, n in stats.sizes.items()) == 32
    assert fn.threads == {"batcher"}  # the function runs only on the batcher's thread


def test_analyzer_batched_results_equal_unbatched(
    analyzer: Analyzer, sample_records: list[EcgRecord]
) -> None:
    records = sample_records * 2  # 16 callers
    expected = [_probs(analyzer.analyze(r)) for r in records]
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    batched = BatchingAnalyzer(analyzer, max_batch=8, wait_ms=100)
    try:
        results = concurrently(
            len(records),
            lambda i: batched.analyze(records[i], now=t0 + timedelta(seconds=i)),
        )
        stats = batched.batcher.stats()
    finally:
        batched.close()
    for i, (res, want) in enumerate(zip(results, expected, strict=True)):
        assert isinstance(res, AnalysisResult), res
        assert res.record_id == records[i].record_id
        assert res.analysed_at == t0 + timedelta(seconds=i)  # the caller's own clock
        got = _probs(res)
        assert got.keys() == want.keys()
        for task, value in want.items():
            assert got[task] == pytest.approx(value, abs=ATOL), (records[i].record_id, task)
    assert stats.items == len(records)
    assert max(stats.sizes) > 1, stats  # the model saw real batches
    assert batched.model is analyzer.model  # one model, shared


def test_one_bad_item_fails_only_its_caller() -> None:
    fn = Recorder(delay_s=0.01)
    with DynamicBatcher(fn, max_batch=4, wait_ms=200) as batcher:
        items = [1, -5, 2, 3]
        results = concurrently(4, lambda i: batcher.run(items[i], timeout_s=30))
        stats = batcher.stats()
    assert results[0] == 1 and results[2] == 4 and results[3] == 9
    assert isinstance(results[1], ValueError) and str(results[1]) == "negative item -5"
    assert stats.fallbacks >= 1
    assert stats.calls == len(fn.batches)  # every model call counted, reruns included
    # the failed batch was re-run one item at a time
    assert sorted((b for b in fn.batches if len(b) == 1), key=lambda b: items.index(b[0])) == [
        [1],
        [-5],
        [2],
        [3],
    ]


def test_analyzer_bad_record_fails_only_its_caller(
    analyzer: Analyzer, sample_records: list[EcgRecord]
) -> None:
    rec = sample_records[0]
    no_v6 = EcgRecord(
        signals_mv=np.ascontiguousarray(rec.signals_mv[:11]),
        lead_names=LEADS_12[:11],
        fs_hz=rec.fs_hz,
        record_id="no-v6",
    )
    records = [sample_records[1], no_v6, sample_records[2], sample_records[3]]
    with pytest.raises(EcgValidationError):
        analyzer.analyze_batch(records)  # unbatched, the whole call fails
    batched = BatchingAnalyzer(analyzer, max_batch=4, wait_ms=200)
    try:
        results = concurrently(4, lambda i: batched.analyze(records[i]))
    finally:
        batched.close()
    assert isinstance(results[1], EcgValidationError) and results[1].field == "lead_names"
    for i in (0, 2, 3):
        res = results[i]
        assert isinstance(res, AnalysisResult) and res.record_id == records[i].record_id
        assert _probs(res)["mi"] == pytest.approx(
            _probs(analyzer.analyze(records[i]))["mi"], abs=ATOL
        )


def test_a_lone_item_waits_for_the_window_then_runs_alone() -> None:
    fn = Recorder()
    with DynamicBatcher(fn, max_batch=32, wait_ms=60) as batcher:
        t0 = time.monotonic()
        assert batcher.run(7, timeout_s=30) == 49
        waited = time.monotonic() - t0
    assert fn.batches == [[7]]
    assert waited >= 0.06  # it waited for company, and then went alone


def test_zero_wait_takes_what_is_queued() -> None:
    release = threading.Event()
    first_started = threading.Event()

    def fn(items: Sequence[int]) -> list[int]:
        first_started.set()
        release.wait(10)
        return list(items)

    with DynamicBatcher(fn, max_batch=8, wait_ms=0) as batcher:
        first = batcher.submit(0)
        assert first_started.wait(10)
        rest = [batcher.submit(i) for i in range(1, 6)]  # queued while the model is busy
        release.set()
        assert first.result(10) == 0 and [f.result(10) for f in rest] == [1, 2, 3, 4, 5]
        stats = batcher.stats()
    assert stats.sizes == {1: 1, 5: 1}


def test_result_timeout_cancels_an_item_not_yet_started() -> None:
    release = threading.Event()
    seen: list[list[int]] = []

    def fn(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        release.wait(10)
        return list(items)

    batcher = DynamicBatcher(fn, max_batch=1, wait_ms=0)
    try:
        busy = batcher.submit(1)
        with pytest.raises(BatchTimeoutError, match=r"no result within 0\.1 s"):
            batcher.run(2, timeout_s=0.1)  # stuck behind the busy model
        release.set()
        assert busy.result(10) == 1
    finally:
        batcher.close()
    assert seen == [[1]]  # the timed-out item never reached the model


def test_full_queue_refuses_after_the_timeout() -> None:
    release = threading.Event()
    started = threading.Event()

    def fn(items: Sequence[int]) -> list[int]:
        started.set()
        release.wait(10)
        return list(items)

    batcher = DynamicBatcher(fn, max_batch=1, wait_ms=0, max_queue=1)
    try:
        running = batcher.submit(1)
        assert started.wait(10)
        queued = batcher.submit(2)
        with pytest.raises(BatcherFullError, match="stayed full"):
            batcher.submit(3, timeout_s=0.05)
        release.set()
        assert running.result(10) == 1 and queued.result(10) == 2
    finally:
        batcher.close()


def test_close_finishes_queued_work_refuses_new_and_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    fn = Recorder(delay_s=0.01)
    batcher = DynamicBatcher(fn, max_batch=2, wait_ms=1000, name="closing-batcher")
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close(timeout_s=10)  # does not wait out the 1 s window: closing flushes
    assert [f.result(0) for f in futures] == [0, 1, 4, 9, 16]
    assert not any(t.name == "closing-batcher" for t in threading.enumerate())
    assert set(threading.enumerate()) <= before
    with pytest.raises(BatcherClosedError):
        batcher.submit(5)
    batcher.close()  # idempotent


def test_analyzer_close_stops_its_thread(analyzer: Analyzer) -> None:
    batched = BatchingAnalyzer(analyzer, max_batch=4, wait_ms=5)
    name = f"ecg-batcher-{analyzer.device}"
    assert any(t.name == name for t in threading.enumerate())
    batched.close()
    assert not any(t.name == name for t in threading.enumerate())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch": 0, "wait_ms": 0}, "max_batch must be at least 1, got 0"),
        ({"max_batch": 2, "wait_ms": -1}, "wait_ms must be 0 or more, got -1"),
        ({"max_batch": 4, "wait_ms": 0, "max_queue": 2}, r"max_queue \(2\) must be at least"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(Recorder(), **kwargs)  # type: ignore[arg-type]
