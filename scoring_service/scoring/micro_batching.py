"""Micro-batching: concurrent requests share one feature read and one model call.

``MicroBatcher.submit`` parks a request and returns its own result once the batch it joined
has been processed. A batch leaves:

- at once when nothing is being processed (an idle service adds no wait: a lone request is
  sent on the next turn of the event loop, with whatever arrived in the same turn);
- when the batch in progress finishes (requests that arrived meanwhile go together);
- when its oldest request has waited ``max_wait_s``, even if another batch is in progress;
- when it holds ``max_size`` rows.

Under load, batches therefore grow to what arrives while the previous one is read and scored,
and no request waits longer than ``max_wait_s`` to leave. ``process`` gets the items of a batch
in arrival order and returns one result per item; if it raises, every waiter of that batch gets
the same exception. Waiters that gave up (cancelled at a deadline) are dropped before a batch
leaves, and their results, if already computed, are discarded.

Everything runs on the event loop that calls ``submit``; there is no background task to start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class BatcherClosed(RuntimeError):
    """The batcher has been closed; it takes no more requests."""


@dataclass
class _Entry(Generic[ItemT, ResultT]):
    item: ItemT
    size: int
    future: asyncio.Future[ResultT]


class MicroBatcher(Generic[ItemT, ResultT]):
    """Gathers concurrent submissions into one call of ``process``."""

    def __init__(
        self,
        process: Callable[[list[ItemT]], Awaitable[list[ResultT]]],
        *,
        max_size: int,
        max_wait_s: float,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        self.process = process
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._pending: list[_Entry[ItemT, ResultT]] = []
        self._pending_size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tick_scheduled = False
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0
        """Batches sent so far (for tests and metrics)."""
        self.rows = 0
        """Rows sent so far."""

    @property
    def in_flight(self) -> int:
        """Batches being processed now."""
        return len(self._running)

    async def submit(self, item: ItemT, size: int = 1) -> ResultT:
        """Join the next batch; returns this item's result or raises the batch's error."""
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        loop = asyncio.get_running_loop()
        if self._pending_size + size > self.max_size:
            self._dispatch()  # keep every batch within max_size
        future: asyncio.Future[ResultT] = loop.create_future()
        self._pending.append(_Entry(item, size, future))
        self._pending_size += size
        if self._pending_size >= self.max_size:
            self._dispatch()
        else:
            if not self._running and not self._tick_scheduled:
                # Idle: leave on the next loop turn, with whatever arrives in this one.
                self._tick_scheduled = True
                loop.call_soon(self._on_tick)
            if self._timer is None:
                self._timer = loop.call_later(self.max_wait_s, self._on_timer)
        return await future

    def _on_tick(self) -> None:
        self._tick_scheduled = False
        if not self._running:
            self._dispatch()

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        """Send what is pending as one batch (without waiters that gave up)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries = [e for e in self._pending if not e.future.done()]
        self._pending = []
        self._pending_size = 0
        if not entries:
            return
        task = asyncio.ensure_future(self._run(entries))
        self._running.add(task)
        task.add_done_callback(self._finished)

    async def _run(self, entries: list[_Entry[ItemT, ResultT]]) -> None:
        self.batches += 1
        self.rows += sum(e.size for e in entries)
        try:
            results = await self.process([e.item for e in entries])
            if len(results) != len(entries):
                raise RuntimeError(
                    f"batch processor returned {len(results)} results for {len(entries)} items"
                )
        except Exception as exc:  # every waiter of the batch gets the same error
            for entry in entries:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): so are its waiters
            for entry in entries:
                entry.future.cancel()
            raise
        for entry, result in zip(entries, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        # Requests that arrived while this batch was processed leave now, together.
        if self._pending and not self._running:
            self._dispatch()

    async def close(self) -> None:
        """Take no more requests; send what is pending and wait for batches in progress."""
        self._closed = True
        self._dispatch()
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
