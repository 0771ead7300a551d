"""Micro-batching: concurrent requests wait a few milliseconds and share one blocking call.

The blocking call (encode + one decoder forward + durable writes) runs in a single worker thread,
so the event loop keeps accepting requests meanwhile; everything that arrives while a batch runs
forms the next batch (up to ``max_batch``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

from dnd_jax.serving.requests import ApiError


class Batcher:
    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch: int, max_wait_s: float,
                 max_queue: int):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run_batch = run_batch
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dnd-batch")
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.pending = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, item: Any) -> Any:
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        if self.pending >= self.max_queue:
            raise ApiError(503, f"server busy: {self.pending} requests queued (limit {self.max_queue}); retry later")
        fut = asyncio.get_running_loop().create_future()
        self.pending += 1
        self._queue.put_nowait((item, fut))
        try:
            return await fut
        finally:
            self.pending -= 1

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in live])
            except Exception as e:  # noqa: BLE001 - every waiter gets the failure, the loop goes on
                results = [e] * len(live)
            for (_, fut), res in zip(live, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
