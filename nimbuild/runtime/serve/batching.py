"""Dynamic batching: rows from many requests share model calls, off the event loop.

Requests queue their rows; one worker thread takes whole requests in arrival
order until it holds ``max_batch_size`` rows or the oldest has waited
``max_queue_delay`` (a short wait, so a lone request is not held back), sorts
those rows by length so that each model call pads little, splits them into
calls of at most ``max_batch_size`` rows, and scatters the logits back to
their request and index. A request is answered as soon as its last row is done.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from nimbuild.runtime.serve.tokenize import EncodedPair, pad_rows

if TYPE_CHECKING:
    from nimbuild.runtime.serve.metrics import ServeMetrics

log = logging.getLogger("nimbuild.serve")

InferFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class QueueFull(RuntimeError):
    """More rows waiting than the server accepts (a 429 for the client)."""


class ShuttingDown(RuntimeError):
    """The server is stopping and takes no new work (a 503)."""


class _Job:
    __slots__ = ("rows", "scores", "remaining", "future", "loop", "enqueued")

    def __init__(
        self, rows: Sequence[EncodedPair], future: asyncio.Future[np.ndarray], loop: asyncio.AbstractEventLoop
    ):
        self.rows = rows
        self.scores = np.empty(len(rows), dtype=np.float32)
        self.remaining = len(rows)
        self.future = future
        self.loop = loop
        self.enqueued = time.monotonic()


def _resolve(
    future: asyncio.Future[np.ndarray], result: np.ndarray | None = None, error: BaseException | None = None
) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    elif result is not None:
        future.set_result(result)
    else:
        future.set_exception(RuntimeError("no result and no error"))


def plan_calls(lengths: Sequence[int], max_batch_size: int) -> list[list[int]]:
    """Row indexes, sorted by length, split into ceil(n / max) calls of near-equal size."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    if n == 0:
        return []
    calls = -(-n // max_batch_size)
    size, extra = divmod(n, calls)
    out, start = [], 0
    for c in range(calls):
        end = start + size + (1 if c < extra else 0)
        out.append(order[start:end])
        start = end
    return out


class DynamicBatcher:
    """Batches rows across requests for one backend; ``await submit(rows)`` gives their logits."""

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        pad_id: int,
        max_queue_delay_s: float = 0.002,
        max_pending_rows: int = 100_000,
        metrics: ServeMetrics | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.infer = infer
        self.max_batch_size = int(max_batch_size)
        self.pad_id = int(pad_id)
        self.max_queue_delay_s = float(max_queue_delay_s)
        self.max_pending_rows = int(max_pending_rows)
        self.metrics = metrics
        self._pending: collections.deque[_Job] = collections.deque()
        self._pending_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- event-loop side -------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="nimbuild-batcher", daemon=True)
        self._thread.start()

    async def submit(self, rows: Sequence[EncodedPair]) -> np.ndarray:
        """Logits for ``rows``, in their order."""
        if not rows:
            return np.empty(0, dtype=np.float32)
        loop = asyncio.get_running_loop()
        job = _Job(rows, loop.create_future(), loop)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if self._pending_rows + len(rows) > self.max_pending_rows and self._pending:
                raise QueueFull(f"{self._pending_rows} passages already queued (limit {self.max_pending_rows})")
            self._pending.append(job)
            self._pending_rows += len(rows)
            self._set_depth()
            self._cond.notify()
        scores: np.ndarray = await job.future
        return scores

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    # -- worker side -----------------------------------------------------------------------------
    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._pending_rows)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._pending[0].enqueued + self.max_queue_delay_s
            while self._pending_rows < self.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs, rows = [], 0
            while self._pending and rows < self.max_batch_size:
                job = self._pending.popleft()
                jobs.append(job)
                rows += len(job.rows)
            self._pending_rows -= rows
            self._set_depth()
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                self._process(jobs)
            except BaseException as exc:  # never let the worker die: fail these requests, keep serving
                log.exception("inference failed")
                for job in jobs:
                    if job.remaining:
                        job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)

    def _process(self, jobs: list[_Job]) -> None:
        flat = [(job, i) for job in jobs for i in range(len(job.rows))]
        lengths = [len(job.rows[i]) for job, i in flat]
        for call in plan_calls(lengths, self.max_batch_size):
            rows = [flat[k][0].rows[flat[k][1]] for k in call]
            ids, mask, types = pad_rows(rows, self.pad_id)
            started = time.perf_counter()
            logits = self.infer(ids, mask, types)
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(rows))
                self.metrics.inference_seconds.observe(time.perf_counter() - started)
                self.metrics.padding_ratio.observe(1.0 - float(mask.sum()) / mask.size)
            if logits.shape[0] != len(rows):
                raise RuntimeError(f"backend returned {logits.shape[0]} logits for {len(rows)} rows")
            for k, logit in zip(call, logits, strict=True):
                job, i = flat[k]
                job.scores[i] = logit
                job.remaining -= 1
                if job.remaining == 0:
                    job.loop.call_soon_threadsafe(_resolve, job.future, job.scores)
