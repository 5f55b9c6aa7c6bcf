"""Micro-batching: concurrent requests share forward passes and each gets its own slice back."""

from __future__ import annotations

import asyncio

import pytest
import torch
from torch import Tensor

from normadd.normality.addition import AdditionResult
from normadd.serve.batching import MicroBatcher


def _fake_explain(calls: list[int]):
    def explain(images: Tensor) -> AdditionResult:
        calls.append(images.shape[0])
        scores = images.flatten(1).mean(1)  # each image's own value, so slices can be checked
        maps = images[:, 0]
        return AdditionResult(
            before=maps,
            before_scores=scores,
            detector_scores=scores,
            suppression=maps[:, None],
            keep=torch.ones_like(maps),
            after=maps,
            after_scores=scores,
            names=["scratch"],
        )

    return explain


def test_concurrent_requests_are_gathered_into_one_pass_and_split_back() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_fake_explain(calls), max_images=16, max_wait_ms=50)
    requests = [torch.full((count, 3, 4, 4), float(i)) for i, count in enumerate([1, 2, 1, 3])]

    async def run() -> list[AdditionResult]:
        try:
            return await asyncio.gather(*(batcher.submit(images) for images in requests))
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert calls == [7]
    for i, (images, result) in enumerate(zip(requests, results, strict=True)):
        assert result.after_scores.tolist() == [float(i)] * images.shape[0]
        assert result.names == ["scratch"]


def test_a_pass_never_grows_past_max_images() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_fake_explain(calls), max_images=2, max_wait_ms=50)

    async def run() -> None:
        try:
            await asyncio.gather(*(batcher.submit(torch.zeros(1, 3, 4, 4)) for _ in range(5)))
        finally:
            await batcher.stop()

    asyncio.run(run())
    assert sum(calls) == 5 and max(calls) <= 2


def test_a_failing_pass_fails_its_requests_and_the_worker_goes_on() -> None:
    calls: list[int] = []
    good = _fake_explain(calls)

    def explain(images: Tensor) -> AdditionResult:
        if torch.isnan(images).any():
            raise RuntimeError("bad batch")
        return good(images)

    batcher = MicroBatcher(explain, max_images=16, max_wait_ms=0)

    async def run() -> AdditionResult:
        try:
            with pytest.raises(RuntimeError, match="bad batch"):
                await batcher.submit(torch.full((1, 3, 4, 4), float("nan")))
            return await batcher.submit(torch.ones(1, 3, 4, 4))
        finally:
            await batcher.stop()

    assert asyncio.run(run()).after_scores.tolist() == [1.0]


def test_a_result_that_cannot_be_split_fails_its_requests_instead_of_hanging_the_worker() -> None:
    calls: list[int] = []
    good = _fake_explain(calls)
    answers = iter([None, "use the good one"])

    def explain(images: Tensor) -> AdditionResult:
        return good(images) if next(answers) else None  # type: ignore[return-value]

    batcher = MicroBatcher(explain, max_images=1, max_wait_ms=1)

    async def run() -> tuple[BaseException | AdditionResult, ...]:
        try:
            return tuple(
                await asyncio.wait_for(
                    asyncio.gather(
                        *(batcher.submit(torch.zeros(1, 3, 4, 4)) for _ in range(2)), return_exceptions=True
                    ),
                    timeout=10,
                )
            )
        finally:
            await batcher.stop()

    first, second = asyncio.run(run())
    assert isinstance(first, Exception)
    assert isinstance(second, AdditionResult)
