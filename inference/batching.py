"""Dynamic batching: many caller threads, one model thread, one batched call per batch.

A caller submits one item and blocks on its future. The model thread takes the first waiting
item, then keeps collecting until it holds ``max_batch`` items or ``wait_ms`` have passed
since it took the first, and makes one call of the batch function. Each caller gets its own
result, or its own exception: when a batch call raises, the batch is retried one item at a
time, so one bad ECG fails only its own caller.

The queue is bounded (``max_queue``): a submitter waits for room, up to its timeout, then
gets `BatcherFullError`. `close` refuses new work, finishes what is queued and joins the
model thread. `BatchingAnalyzer` puts an `Analyzer` behind a batcher, so that the worker's
threads share one GPU (or CPU) model call per batch (MODEL_CARD.md, device and batching).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Generic, Self, TypeVar

from inference.analyzer import Analyzer
from inference.errors import EcgBridgeError
from inference.record import EcgRecord
from inference.result import AnalysisResult

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: How long `BatchingAnalyzer.analyze` waits for its result by default. Celery's thread pool
#: does not enforce task time limits, so the batcher bounds the wait itself.
DEFAULT_RESULT_TIMEOUT_S = 60.0


class BatcherClosedError(EcgBridgeError, RuntimeError):
    """The batcher is closed (the worker is shutting down): the item was not analysed. The
    task fails and Celery's late acknowledgement gives the ECG to another worker."""


class BatcherFullError(EcgBridgeError, TimeoutError):
    """The batcher's queue stayed full for the submitter's whole timeout. A transient
    error: the worker retries the ECG with backoff."""


class BatchTimeoutError(EcgBridgeError, TimeoutError):
    """The result did not come within the caller's timeout (the item, if not yet started,
    is cancelled). A transient error: the worker retries the ECG with backoff."""


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What the batcher did so far: items done, batches formed, how many batches had each
    size (``{size: count}``), how many failed and were rerun item by item, and the model
    calls made in all (batches plus those one-item reruns)."""

    items: int
    batches: int
    sizes: dict[int, int]
    fallbacks: int
    calls: int = 0


class DynamicBatcher(Generic[T, R]):
    """Collects items from many threads into batches for one function (see module docstring).

    `fn` takes a sequence of items and returns one result per item, in order. It runs only
    on the batcher's own thread.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_batch: int,
        wait_ms: float,
        max_queue: int | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if wait_ms < 0:
            raise ValueError(f"wait_ms must be 0 or more, got {wait_ms}")
        max_queue = 4 * max_batch if max_queue is None else max_queue
        if max_queue < max_batch:
            raise ValueError(f"max_queue ({max_queue}) must be at least max_batch ({max_batch})")
        self._fn = fn
        self._max_batch = max_batch
        self._wait_s = wait_ms / 1000.0
        self._max_queue = max_queue
        self._items: deque[tuple[T, Future[R]]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._sizes: Counter[int] = Counter()
        self._fallbacks = 0
        self._reruns = 0  # one-item calls after a failed batch
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def wait_ms(self) -> float:
        return self._wait_s * 1000.0

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> BatchStats:
        with self._cond:
            sizes = dict(sorted(self._sizes.items()))
            fallbacks = self._fallbacks
            reruns = self._reruns
        return BatchStats(
            items=sum(k * v for k, v in sizes.items()),
            batches=sum(sizes.values()),
            sizes=sizes,
            fallbacks=fallbacks,
            calls=sum(sizes.values()) + reruns,
        )

    def submit(self, item: T, *, timeout_s: float | None = None) -> Future[R]:
        """Queue `item`; its future holds the result or the exception. Waits up to
        `timeout_s` (None: forever) for room in the queue. Raises `BatcherFullError` or
        `BatcherClosedError`."""
        future: Future[R] = Future()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._closed and len(self._items) >= self._max_queue:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise BatcherFullError(
                        f"the batch queue stayed full ({self._max_queue} items) "
                        f"for {timeout_s:.3g} s"
                    )
                self._cond.wait(remaining)
            if self._closed:
                raise BatcherClosedError("the batcher is closed; the item was not queued")
            self._items.append((item, future))
            self._cond.notify_all()
        return future

    def run(self, item: T, *, timeout_s: float | None = None) -> R:
        """Submit `item` and wait for its result (its exception is raised here). With
        `timeout_s`, the whole wait (queue room and result) is bounded: `BatchTimeoutError`
        (the item is cancelled when it has not started)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        future = self.submit(item, timeout_s=timeout_s)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return future.result(timeout=remaining)
        except FutureTimeoutError:
            future.cancel()
            raise BatchTimeoutError(f"no result within {timeout_s:.3g} s") from None

    def close(self, *, timeout_s: float | None = 30.0) -> None:
        """Refuse new items, finish the queued ones, stop the model thread. Idempotent.
        Raises `TimeoutError` when the thread is still busy after `timeout_s`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"the batcher thread did not finish within {timeout_s} s")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the model thread ---------------------------------------------------------------
    def _next_batch(self) -> list[tuple[T, Future[R]]] | None:
        """Wait for the first item, then up to `wait_ms` for the batch to fill. None when
        closed and drained."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                return None
            deadline = time.monotonic() + self._wait_s
            while len(self._items) < self._max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self._max_batch, len(self._items))
            batch = [self._items.popleft() for _ in range(n)]
            self._cond.notify_all()  # room for waiting submitters
        return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            # Callers that gave up (timeout) cancelled their futures: skip those items.
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if live:
                self._call(live)

    def _call(self, batch: list[tuple[T, Future[R]]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = self._fn(items)
            if len(results) != len(items):
                raise RuntimeError(
                    f"the batch function returned {len(results)} results for {len(items)} items"
                )
        except BaseException as exc:  # routed to the callers, never lost
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                self._count(1, fallback=False)
                return
            logger.warning(
                "a batch of %d failed (%s); running its items one by one",
                len(batch),
                exc.__class__.__name__,
            )
            self._count(len(batch), fallback=True)
            for pair in batch:
                self._call_one(pair)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
        self._count(len(batch), fallback=False)

    def _call_one(self, pair: tuple[T, Future[R]]) -> None:
        item, future = pair
        with self._cond:
            self._reruns += 1
        try:
            (result,) = self._fn([item])
        except BaseException as exc:  # this caller's own error
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _count(self, size: int, *, fallback: bool) -> None:
        with self._cond:
            self._sizes[size] += 1
            self._fallbacks += int(fallback)


@dataclass(frozen=True, slots=True)
class _Request:
    record: EcgRecord
    now: datetime


class BatchingAnalyzer(Analyzer):
    """An `Analyzer` whose `analyze` goes through a `DynamicBatcher`: concurrent callers
    (the worker's task threads) share batched model calls. Same model, same results as the
    analyzer it wraps (to float rounding, 1e-5); each result keeps its caller's ``now``.
    `analyze_batch` is not re-batched. Call `close` when done (the worker does at shutdown).
    """

    def __init__(
        self,
        inner: Analyzer,
        *,
        max_batch: int,
        wait_ms: float,
        max_queue: int | None = None,
        result_timeout_s: float | None = DEFAULT_RESULT_TIMEOUT_S,
    ) -> None:
        super().__init__(
            inner.model,
            inner.weights,
            device=inner.device,
            quality_conf=inner.quality_conf,
            fairness=inner.fairness,
            group_thresholds=inner.group_thresholds,
        )
        self._result_timeout_s = result_timeout_s
        self._batcher: DynamicBatcher[_Request, AnalysisResult] = DynamicBatcher(
            self._analyze_requests,
            max_batch=max_batch,
            wait_ms=wait_ms,
            max_queue=max_queue,
            name=f"ecg-batcher-{inner.device}",
        )

    @property
    def batcher(self) -> DynamicBatcher[_Request, AnalysisResult]:
        return self._batcher

    def analyze(self, record: EcgRecord, *, now: datetime | None = None) -> AnalysisResult:
        """As `Analyzer.analyze`, batched with other threads' calls. Also raises
        `BatchTimeoutError`, `BatcherFullError` (transient) or `BatcherClosedError`."""
        request = _Request(record, now or datetime.now(UTC))
        return self._batcher.run(request, timeout_s=self._result_timeout_s)

    def _analyze_requests(self, requests: Sequence[_Request]) -> list[AnalysisResult]:
        results = self.analyze_batch([r.record for r in requests], now=requests[0].now)
        return [
            res if res.analysed_at == r.now else replace(res, analysed_at=r.now)
            for res, r in zip(results, requests, strict=True)
        ]

    def close(self, *, timeout_s: float | None = 30.0) -> None:
        self._batcher.close(timeout_s=timeout_s)
        stats = self._batcher.stats()
        logger.info(
            "batcher closed: %d ECGs in %d model calls (batch sizes %s, %d fallbacks)",
            stats.items,
            stats.calls,
            stats.sizes,
            stats.fallbacks,
        )
