"""Micro-batching: windows from concurrent requests share one ONNX Runtime run.

Per loaded model a :class:`MicroBatcher` owns an asyncio queue of ``(feeds, future)`` items. Its worker
takes the first item, then whatever else arrives within ``timeout_s`` until ``max_batch`` windows are
gathered, concatenates the feeds along axis 0, runs the model in a worker thread (never on the event loop)
and splits the outputs back to each item's future. A request with more windows than ``max_batch`` is cut
into chunks that are queued separately (and may share runs with other requests' chunks).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anyio
import numpy as np

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # how long stopping the service waits for a cancelled task (a batcher's worker, a job) to end

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]


def task_stacks(tasks: Iterable[asyncio.Task]) -> str:
    """Where each task waits: what a warning about a task that ignored its cancellation should show."""
    out = io.StringIO()
    for task in tasks:
        task.print_stack(file=out)
    return out.getvalue()


class BatcherClosed(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class BatchStats:
    """Counters since start; ``items`` are queued chunks (one per request unless it was split)."""

    batches: int = 0
    windows: int = 0
    items: int = 0
    largest_batch: int = 0
    most_items_in_batch: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Item:
    feeds: Feeds
    size: int
    future: asyncio.Future[Feeds]
    key: tuple = field(default=())


def _batch_size(feeds: Feeds) -> int:
    sizes = {int(v.shape[0]) for v in feeds.values()}
    if len(sizes) != 1:
        raise ValueError(f"feeds disagree on the batch size: { {k: v.shape for k, v in feeds.items()} }")
    return sizes.pop()


def _shape_key(feeds: Feeds) -> tuple:
    """Items can share a run only when every input agrees on everything but the batch axis."""
    return tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in feeds.items()))


class MicroBatcher:
    def __init__(
        self, run: RunFn, max_batch: int = 16, timeout_s: float = 0.005, name: str = "model"
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run = run
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.name = name
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Item | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._serve(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            # bounded: a run still in its thread must not hold up the service's shutdown for ever
            _, late = await asyncio.wait({worker}, timeout=STOP_GRACE_S)
            if late:
                log.warning("%s batcher: its worker did not stop within %g s; left behind:\n%s", self.name,
                            STOP_GRACE_S, task_stacks(late))
        pending = [self._carry] if self._carry is not None else []
        self._carry = None
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for item in pending:
            if not item.future.done():
                item.future.set_exception(BatcherClosed(f"{self.name} batcher stopped"))

    async def infer(self, feeds: Feeds) -> Feeds:
        """Run ``feeds`` (batch on axis 0) through the model, sharing runs with concurrent callers."""
        if not self.running or self._queue is None:
            raise BatcherClosed(f"{self.name} batcher is not running")
        total = _batch_size(feeds)
        if total == 0:
            raise ValueError("empty batch")
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, total, self.max_batch):
            chunk = {k: v[start : start + self.max_batch] for k, v in feeds.items()}
            future: asyncio.Future[Feeds] = loop.create_future()
            self._queue.put_nowait(_Item(chunk, _batch_size(chunk), future, _shape_key(chunk)))
            futures.append(future)
        try:
            parts = await asyncio.gather(*futures)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}

    async def _next(self) -> _Item:
        assert self._queue is not None
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return await self._queue.get()

    async def _gather(self) -> list[_Item]:
        """The first live item, then more until ``max_batch`` windows or the timeout; never mixes shapes."""
        assert self._queue is not None
        first = await self._next()
        while first.future.done():  # its caller went away
            first = await self._next()
        items, size = [first], first.size
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while size < self.max_batch:
            try:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                else:
                    item = self._queue.get_nowait()
            except TimeoutError:
                break
            if item.future.done():
                continue
            if item.key != first.key or size + item.size > self.max_batch:
                self._carry = item
                break
            items.append(item)
            size += item.size
        return items

    async def _serve(self) -> None:
        while True:
            items = await self._gather()
            feeds = (
                items[0].feeds
                if len(items) == 1
                else {k: np.concatenate([it.feeds[k] for it in items], axis=0) for k in items[0].feeds}
            )
            size = sum(it.size for it in items)
            try:
                outputs = await anyio.to_thread.run_sync(self._run, feeds)
            except asyncio.CancelledError:
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(BatcherClosed(f"{self.name} batcher stopped"))
                raise
            except Exception as exc:  # the callers get the error; the worker lives on
                self.stats.errors += 1
                log.exception("%s: a batch of %d windows failed", self.name, size)
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.windows += size
            self.stats.items += len(items)
            self.stats.largest_batch = max(self.stats.largest_batch, size)
            self.stats.most_items_in_batch = max(self.stats.most_items_in_batch, len(items))
            offset = 0
            for it in items:
                if not it.future.done():
                    it.future.set_result({k: v[offset : offset + it.size] for k, v in outputs.items()})
                offset += it.size
