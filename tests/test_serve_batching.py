"""Dynamic batching: rows of concurrent requests share calls, sorted by length, scattered back exactly."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from nimbuild.runtime.serve.batching import DynamicBatcher, QueueFull, plan_calls
from nimbuild.runtime.serve.tokenize import EncodedPair

PAD = 0


def row(*ids: int) -> EncodedPair:
    return EncodedPair(np.asarray(ids, dtype=np.int64), np.zeros(len(ids), dtype=np.int64))


class RecordingModel:
    """A backend double whose logit is a known function of the row: sum(ids) + 0.001 * length."""

    def __init__(self, fail_on: int | None = None):
        self.calls: list[tuple[int, int, list[int]]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, ids, mask, types):
        assert threading.current_thread() is not threading.main_thread()  # off the event loop
        lengths = mask.sum(axis=1).tolist()
        with self.lock:
            self.calls.append((ids.shape[0], ids.shape[1], lengths))
        if self.fail_on is not None and self.fail_on in ids:
            raise RuntimeError("model exploded")
        return (np.where(mask == 1, ids, 0).sum(axis=1) + 0.001 * mask.sum(axis=1)).astype(np.float32)


def expected(rows):
    return [float(r.ids.sum()) + 0.001 * len(r) for r in rows]


def test_plan_calls_sorts_by_length_and_splits_evenly():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10]
    calls = plan_calls(lengths, 4)
    assert [len(c) for c in calls] == [4, 3, 3]  # ceil(10/4)=3 calls, near-equal
    flat = [i for c in calls for i in c]
    assert sorted(flat) == list(range(10))  # every row exactly once
    assert [lengths[i] for i in flat] == sorted(lengths)  # by length: little padding per call
    assert plan_calls([], 4) == []


def test_concurrent_requests_are_batched_and_scattered_back():
    model = RecordingModel()
    rng = np.random.default_rng(0)
    requests = [
        [row(*rng.integers(1, 100, size=rng.integers(1, 30))) for _ in range(rng.integers(1, 12))] for _ in range(40)
    ]

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=16, pad_id=PAD, max_queue_delay_s=0.02)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(r) for r in requests))
        finally:
            batcher.stop()

    results = asyncio.run(main())
    for rows, got in zip(requests, results, strict=True):
        np.testing.assert_allclose(got, expected(rows), rtol=1e-6)
    assert all(b <= 16 for b, _, _ in model.calls)
    # Padding only to the longest row of each call, and calls hold rows of several requests.
    assert all(width == max(lengths) for _, width, lengths in model.calls)
    assert sum(b for b, _, _ in model.calls) == sum(len(r) for r in requests)
    assert len(model.calls) < len(requests)


def test_a_lone_request_waits_at_most_the_queue_delay():
    model = RecordingModel()

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=64, pad_id=PAD, max_queue_delay_s=0.05)
        batcher.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await batcher.submit([row(1, 2, 3)])
        batcher.stop()
        return got, loop.time() - t0

    got, waited = asyncio.run(main())
    assert got.tolist() == pytest.approx([6.003])
    assert waited < 5.0  # not held forever waiting for a full batch


def test_a_failing_call_fails_its_requests_and_the_worker_keeps_serving():
    model = RecordingModel(fail_on=999)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=4, pad_id=PAD, max_queue_delay_s=0.0)
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="model exploded"):
                await batcher.submit([row(999)])
            return await batcher.submit([row(1, 1), row(2)])
        finally:
            batcher.stop()

    assert asyncio.run(main()).tolist() == pytest.approx([2.002, 2.001])


def test_queue_limit_refuses_instead_of_growing_without_bound():
    gate = threading.Event()

    def slow(ids, mask, types):
        gate.wait(5)
        return np.zeros(ids.shape[0], dtype=np.float32)

    async def main():
        batcher = DynamicBatcher(slow, max_batch_size=2, pad_id=PAD, max_queue_delay_s=0.0, max_pending_rows=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([row(1), row(2)]))  # taken by the worker, blocks
        await asyncio.sleep(0.1)
        queued = asyncio.ensure_future(batcher.submit([row(1)] * 4))  # fills the queue
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await batcher.submit([row(1)])
        gate.set()
        await first
        await queued
        batcher.stop()

    asyncio.run(main())


def test_stop_drains_what_is_queued():
    model = RecordingModel()

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=64, pad_id=PAD, max_queue_delay_s=1.0)
        batcher.start()
        fut = asyncio.ensure_future(batcher.submit([row(4, 5)]))
        await asyncio.sleep(0.05)
        await asyncio.get_running_loop().run_in_executor(None, batcher.stop)  # before the 1 s delay ends
        return await fut

    assert asyncio.run(main()).tolist() == pytest.approx([9.002])


def test_limits_take_the_nim_triton_names_too():
    """NIM users set NIM_TRITON_MAX_BATCH_SIZE / ..._MAX_QUEUE_DELAY_MICROSECONDS: the embedded batcher honours them."""
    import pytest

    from nimbuild.errors import NimbuildError
    from nimbuild.runtime.serve.service import Limits

    nim = Limits.from_env(
        {"NIM_TRITON_MAX_BATCH_SIZE": "16", "NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS": "500"}
    )
    assert nim.max_batch_size == 16
    assert nim.max_queue_delay_ms == pytest.approx(0.5)
    # nimbuild's own names win where both are set
    both = Limits.from_env(
        {"NIM_MAX_BATCH_SIZE": "8", "NIM_TRITON_MAX_BATCH_SIZE": "16", "NIM_MAX_QUEUE_DELAY_MS": "3"}
    )
    assert (both.max_batch_size, both.max_queue_delay_ms) == (8, 3.0)
    assert Limits.from_env({}).max_batch_size is None
    with pytest.raises(NimbuildError, match="NIM_TRITON_MAX_BATCH_SIZE"):
        Limits.from_env({"NIM_TRITON_MAX_BATCH_SIZE": "lots"})
