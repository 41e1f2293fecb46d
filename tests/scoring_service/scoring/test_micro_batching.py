"""Micro-batching: concurrent calls share one batch; each gets its own row, or the batch's error.

The tests drive ``MicroBatcher`` with a recording processor on a real event loop; the scorer's
use of it, on a real store and model package, is in test_scorer.py.
"""

from __future__ import annotations

import asyncio

import pytest

from scoring_service.core.errors import FeatureStoreUnavailable
from scoring_service.scoring.micro_batching import BatcherClosed, MicroBatcher

# Longest a test waits for something the batcher must do; only a broken batcher gets near it.
WAIT_S = 30.0


class Recorder:
    """A batch processor that doubles its items and remembers each batch it got."""

    def __init__(self, gate: asyncio.Event | None = None, error: Exception | None = None):
        self.batches: list[list[int]] = []
        self.gate = gate
        self.error = error
        self._arrived = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self._arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        return [2 * i for i in items]

    async def wait_for(self, n: int) -> None:
        """Until ``n`` batches have arrived."""
        async with asyncio.timeout(WAIT_S):
            while len(self.batches) < n:
                self._arrived.clear()
                await self._arrived.wait()


async def settle() -> None:
    """Let every task that can run, run (no wall time: turns of the event loop)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_concurrent_calls_share_a_batch_and_get_their_own_rows() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = MicroBatcher(recorder, max_size=64, max_wait_s=1.0)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        assert results == [2 * i for i in range(20)]
        assert recorder.batches == [list(range(20))]

    asyncio.run(main())


def test_an_idle_batcher_does_not_wait() -> None:
    async def main() -> None:
        max_wait = 120.0
        batcher = MicroBatcher(Recorder(), max_size=64, max_wait_s=max_wait)
        # Left on the next turn of the loop, not by its max_wait timer.
        async with asyncio.timeout(max_wait / 4):
            assert await batcher.submit(21) == 42

    asyncio.run(main())


def test_batches_never_exceed_max_size() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = MicroBatcher(recorder, max_size=4, max_wait_s=10.0)
        sizes = [1, 2, 3, 1, 1, 2, 4, 1]
        results = await asyncio.gather(*(batcher.submit(i, size=s) for i, s in enumerate(sizes)))
        assert results == [2 * i for i in range(len(sizes))]
        for batch in recorder.batches:
            assert sum(sizes[i] for i in batch) <= 4
        assert [i for batch in recorder.batches for i in batch] == list(range(len(sizes)))

    asyncio.run(main())


def test_calls_arriving_during_a_batch_leave_together_after_it() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        recorder = Recorder(gate)
        batcher = MicroBatcher(recorder, max_size=64, max_wait_s=WAIT_S * 4)
        first = asyncio.ensure_future(batcher.submit(0))
        await recorder.wait_for(1)
        assert recorder.batches == [[0]]  # left at once
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await settle()
        assert recorder.batches == [[0]]  # waiting for the batch in progress
        gate.set()
        assert await first == 0 and await asyncio.gather(*rest) == [2, 4, 6, 8, 10]
        assert recorder.batches == [[0], [1, 2, 3, 4, 5]]

    asyncio.run(main())


def test_no_call_waits_longer_than_max_wait() -> None:
    """Even while a batch is stuck, a waiting call leaves after max_wait."""

    async def main() -> None:
        max_wait = 0.05
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()
        recorder = Recorder(gate)
        batcher = MicroBatcher(recorder, max_size=64, max_wait_s=max_wait)
        stuck = asyncio.ensure_future(batcher.submit(0))
        await recorder.wait_for(1)
        submitted = loop.time()
        waiting = asyncio.ensure_future(batcher.submit(1))
        await recorder.wait_for(2)  # the stuck batch is still stuck: its gate is closed
        assert recorder.batches == [[0], [1]]
        # It left by its max_wait timer (not at once: a batch was in progress).
        assert loop.time() - submitted >= max_wait * 0.9
        gate.set()
        assert await asyncio.gather(stuck, waiting) == [0, 2]

    asyncio.run(main())


def test_every_waiter_gets_the_same_error() -> None:
    async def main() -> None:
        error = FeatureStoreUnavailable("The online feature store cannot be read right now.")
        batcher = MicroBatcher(Recorder(error=error), max_size=64, max_wait_s=1.0)
        outcomes = await asyncio.gather(
            *(batcher.submit(i) for i in range(5)), return_exceptions=True
        )
        assert all(outcome is error for outcome in outcomes)
        # The batcher goes on after a failed batch.
        batcher.process = Recorder()
        assert await batcher.submit(3) == 6

    asyncio.run(main())


def test_a_waiter_that_gives_up_is_dropped() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        recorder = Recorder(gate)
        batcher = MicroBatcher(recorder, max_size=64, max_wait_s=WAIT_S * 4)
        busy = asyncio.ensure_future(batcher.submit(0))
        await recorder.wait_for(1)
        impatient = asyncio.ensure_future(batcher.submit(1))
        patient = asyncio.ensure_future(batcher.submit(2))
        await settle()
        impatient.cancel()  # e.g. its deadline passed
        gate.set()
        assert await busy == 0 and await patient == 4
        assert recorder.batches == [[0], [2]]
        with pytest.raises(asyncio.CancelledError):
            await impatient

    asyncio.run(main())


def test_close_finishes_work_and_refuses_more() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        recorder = Recorder(gate)
        batcher = MicroBatcher(recorder, max_size=64, max_wait_s=WAIT_S * 4)
        running = asyncio.ensure_future(batcher.submit(1))
        await recorder.wait_for(1)
        closing = asyncio.ensure_future(batcher.close())
        await settle()
        assert not closing.done()  # waits for the batch in progress
        gate.set()
        await closing
        assert await running == 2
        with pytest.raises(BatcherClosed):
            await batcher.submit(5)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("options", "fault"),
    [
        ({"max_size": 0, "max_wait_s": 1.0}, "max_size must be at least 1"),
        ({"max_size": 4, "max_wait_s": -0.001}, "max_wait_s must not be negative"),
    ],
)
def test_limits_are_validated(options: dict, fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        MicroBatcher(Recorder(), **options)


def test_counts_batches_and_rows() -> None:
    async def main() -> None:
        batcher = MicroBatcher(Recorder(), max_size=64, max_wait_s=1.0)
        await asyncio.gather(*(batcher.submit(i, size=2) for i in range(5)))
        assert (batcher.batches, batcher.rows, batcher.in_flight) == (1, 10, 0)

    asyncio.run(main())
