"""Micro-batching: concurrent inspection requests of one line share one forward pass.

Requests put their images on a queue. A worker takes the first, waits up to ``max_wait_ms`` for
more (or until ``max_images`` are gathered), runs one ``explain`` in a thread, and hands each
request its own slice of the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from normadd.normality.addition import AdditionResult

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    images: Tensor
    future: asyncio.Future[AdditionResult]


@dataclass
class BatchStats:
    """Counters of what the worker did."""

    passes: int = 0
    images: int = 0
    largest: int = 0


def slice_result(result: AdditionResult, start: int, stop: int) -> AdditionResult:
    """The part of a batch result that belongs to images ``start:stop`` (every per-image tensor field)."""
    values: dict[str, Any] = {
        item.name: value[start:stop] if isinstance(value := getattr(result, item.name), Tensor) else copy.copy(value)
        for item in dataclasses.fields(result)
    }
    if result.projected is not None:  # per-layer tensors, each batch-first
        values["projected"] = [tokens[start:stop] for tokens in result.projected]
    return AdditionResult(**values)


class MicroBatcher:
    """Gathers concurrent requests into one call of ``explain``.

    Args:
        explain: The (blocking) forward pass; run in a worker thread.
        max_images: Most images in one pass (a larger single request still runs, alone).
        max_wait_ms: How long the first request waits for others.
        on_pass: Called after each successful pass with its number of images and its seconds
            (the service's metrics).
    """

    def __init__(
        self,
        explain: Callable[[Tensor], AdditionResult],
        max_images: int = 16,
        max_wait_ms: float = 5.0,
        on_pass: Callable[[int, float], None] | None = None,
    ):
        self.explain = explain
        self.max_images = max_images
        self.max_wait = max_wait_ms / 1000.0
        self.on_pass = on_pass
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="normadd-micro-batcher")

    async def stop(self) -> None:
        """Stop the worker; waiting requests get an error."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():
            self._queue.get_nowait().future.set_exception(RuntimeError("the service is shutting down"))

    async def submit(self, images: Tensor) -> AdditionResult:
        """Inspect ``images`` (N, 3, H, W) in the next pass; returns their result."""
        self.start()
        future: asyncio.Future[AdditionResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(images, future))
        return await future

    async def _gather(self) -> list[_Request]:
        batch = [await self._queue.get()]
        count = batch[0].images.shape[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while count < self.max_images:
            remaining = deadline - loop.time()
            try:
                request = (
                    self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            batch.append(request)
            count += request.images.shape[0]
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            images = torch.cat([request.images for request in batch])
            started = time.perf_counter()
            try:
                result = await asyncio.to_thread(self.explain, images)
                parts = []
                start = 0
                for request in batch:
                    stop = start + request.images.shape[0]
                    parts.append(slice_result(result, start, stop))
                    start = stop
            except Exception as error:  # one bad pass fails its requests, never the worker
                logger.exception("forward pass of %d images failed", images.shape[0])
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            self.stats.passes += 1
            self.stats.images += images.shape[0]
            self.stats.largest = max(self.stats.largest, images.shape[0])
            if self.on_pass is not None:
                self.on_pass(int(images.shape[0]), time.perf_counter() - started)
            for request, part in zip(batch, parts, strict=True):
                if not request.future.done():  # the client may have gone away
                    request.future.set_result(part)
