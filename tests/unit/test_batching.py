"""Micro-batching: concurrent requests share forward passes and each gets its own slice back."""

from __future__ import annotations

import asyncio

import pytest
import torch
from torch import Tensor

from normadd.normality.addition import AdditionResult
from normadd.serve.batching import LinesBatcher, MicroBatcher


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


def test_requests_of_several_lines_share_one_pass_and_each_line_gets_its_own_images() -> None:
    calls: list[list[tuple[str, int]]] = []
    fake = _fake_explain([])

    def explain_lines(groups: list[tuple[str, Tensor]]) -> list[AdditionResult | Exception]:
        calls.append([(line, images.shape[0]) for line, images in groups])
        return [fake(images) for _, images in groups]

    passes: list[tuple[str, int]] = []
    batcher = LinesBatcher(
        explain_lines, max_images=16, max_wait_ms=50, on_pass=lambda line, count, _: passes.append((line, count))
    )
    requests = [("a", 1.0, 2), ("b", 2.0, 1), ("a", 3.0, 1), ("c", 4.0, 3)]

    async def run() -> list[AdditionResult]:
        try:
            return await asyncio.gather(
                *(batcher.submit(torch.full((count, 3, 4, 4), value), line) for line, value, count in requests)
            )
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert calls == [[("a", 3), ("b", 1), ("c", 3)]]  # one pass; a line's requests side by side
    assert batcher.stats.passes == 1 and batcher.stats.images == 7
    assert passes == [("a", 3), ("b", 1), ("c", 3)]
    for (_, value, count), result in zip(requests, results, strict=True):
        assert result.after_scores.tolist() == [value] * count


def test_a_line_that_fails_in_a_shared_pass_fails_only_its_own_requests() -> None:
    fake = _fake_explain([])

    def explain_lines(groups: list[tuple[str, Tensor]]) -> list[AdditionResult | Exception]:
        return [RuntimeError(f"line {line} broke") if line == "b" else fake(images) for line, images in groups]

    batcher = LinesBatcher(explain_lines, max_images=16, max_wait_ms=50)

    async def run() -> list[AdditionResult | BaseException]:
        try:
            return await asyncio.gather(
                batcher.submit(torch.ones(1, 3, 4, 4), "a"),
                batcher.submit(torch.ones(1, 3, 4, 4), "b"),
                return_exceptions=True,
            )
        finally:
            await batcher.stop()

    good, bad = asyncio.run(run())
    assert isinstance(good, AdditionResult) and good.after_scores.tolist() == [1.0]
    assert isinstance(bad, RuntimeError) and "line b broke" in str(bad)
