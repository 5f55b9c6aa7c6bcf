"""Micro-batching: concurrent inspection requests share one forward pass, across lines too.

Requests put their images on a queue. A worker takes the first, waits up to ``max_wait_ms`` for
more (or until ``max_images`` are gathered), runs one pass in a thread, and hands each request
its own slice of the result. A :class:`MicroBatcher` serves one line; a :class:`LinesBatcher`
serves several lines that share an image encoder, so the images of all of them that wait at
the same time go through that encoder together (each line then applies its own heads).
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
    line: str = ""


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


# One result per line; an exception in place of a result fails that line's requests only.
ExplainLines = Callable[[list[tuple[str, Tensor]]], list[AdditionResult | Exception]]


class LinesBatcher:
    """Gathers concurrent requests, of one or several lines, into one call of ``explain_lines``.

    Args:
        explain_lines: The (blocking) pass, run in a worker thread: takes ``(line, images)``
            per line present (each line's requests concatenated in arrival order) and returns
            one result per line, in that order; an exception in place of a line's result fails
            that line's requests and no other's.
        max_images: Most images in one pass, all lines together (a larger single request still runs, alone).
        max_wait_ms: How long the first request waits for others.
        on_pass: Called after each successful pass once per line in it, with the line, its
            number of images and the pass's seconds (the service's metrics).
    """

    def __init__(
        self,
        explain_lines: ExplainLines,
        max_images: int = 16,
        max_wait_ms: float = 5.0,
        on_pass: Callable[[str, int, float], None] | None = None,
    ):
        self.explain_lines = explain_lines
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

    async def submit(self, images: Tensor, line: str = "") -> AdditionResult:
        """Inspect ``images`` (N, 3, H, W) of ``line`` in the next pass; returns their result."""
        self.start()
        future: asyncio.Future[AdditionResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(images, future, line))
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
            by_line: dict[str, list[_Request]] = {}
            for request in batch:
                by_line.setdefault(request.line, []).append(request)
            groups = [(line, torch.cat([r.images for r in requests])) for line, requests in by_line.items()]
            count = sum(int(images.shape[0]) for _, images in groups)
            started = time.perf_counter()
            try:
                results = await asyncio.to_thread(self.explain_lines, groups)
                parts: list[tuple[_Request, AdditionResult | Exception]] = []
                for requests, result in zip(by_line.values(), results, strict=True):
                    start = 0
                    for request in requests:
                        stop = start + request.images.shape[0]
                        part = result if isinstance(result, Exception) else slice_result(result, start, stop)
                        parts.append((request, part))
                        start = stop
            except Exception as error:  # one bad pass fails its requests, never the worker
                logger.exception("forward pass of %d images failed", count)
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            seconds = time.perf_counter() - started
            self.stats.passes += 1
            self.stats.images += count
            self.stats.largest = max(self.stats.largest, count)
            if self.on_pass is not None:
                for line, images in groups:
                    self.on_pass(line, int(images.shape[0]), seconds)
            for request, part in parts:
                if request.future.done():  # the client may have gone away
                    continue
                if isinstance(part, Exception):
                    request.future.set_exception(part)
                else:
                    request.future.set_result(part)


class MicroBatcher(LinesBatcher):
    """Gathers concurrent requests of one line into one call of ``explain``.

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
        self.on_images = on_pass
        super().__init__(self._explain_each, max_images, max_wait_ms, self._passed if on_pass else None)

    def _explain_each(self, groups: list[tuple[str, Tensor]]) -> list[AdditionResult | Exception]:
        return [self.explain(images) for _, images in groups]

    def _passed(self, line: str, images: int, seconds: float) -> None:
        if self.on_images is not None:
            self.on_images(images, seconds)
