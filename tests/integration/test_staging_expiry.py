"""Staged normalities change no score until activated; an expired one stops applying at the first
inspection after its ``until``, which the audit log records (time comes from an injected clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from normadd.config import LineConfig
from normadd.images import load_image
from normadd.registry.line_model import LineModel, create_line
from normadd.registry.store import Registry

START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def line(tmp_path: Path, bottle_dir: Path) -> tuple[Registry, LineModel, FakeClock, torch.Tensor]:
    clock = FakeClock()
    registry = Registry(tmp_path / "normadd.db", clock=clock)
    create_line(registry, "line-1", LineConfig(class_name="bottle", backbone="tiny-random"), "alice")
    model = LineModel.load(registry, "line-1")
    paths = [bottle_dir / "test" / "broken_large" / "000.png", bottle_dir / "test" / "contamination" / "000.png"]
    images = torch.stack([load_image(path, model.input_size) for path in paths])
    return registry, model, clock, images


def test_a_staged_normality_changes_no_score_until_it_is_activated(
    line: tuple[Registry, LineModel, FakeClock, torch.Tensor],
) -> None:
    registry, model, _, images = line
    plain = model.explain(images, registry).after_scores
    model.add(registry, "broken", 1.0, "alice", "trial", state="staged")
    staged = model.explain(images, registry)
    assert torch.equal(staged.after_scores, plain) and staged.names == []
    other = LineModel.load(registry, "line-1")  # another process sees the same
    assert torch.equal(other.explain(images, registry).after_scores, plain)
    model.activate(registry, "broken", "bob", "go-live")
    active = model.explain(images, registry)
    assert active.names == ["broken"] and bool((active.after_scores < plain).all())
    assert torch.equal(other.explain(images, registry).after_scores, active.after_scores)


def test_an_expired_normality_stops_applying_at_the_first_inspection_after_its_until(
    line: tuple[Registry, LineModel, FakeClock, torch.Tensor],
) -> None:
    registry, model, clock, images = line
    plain = model.explain(images, registry).after_scores
    until = (START + timedelta(days=14)).isoformat()
    model.add(registry, "broken", 1.0, "alice", "until the supplier's fix lands", until=until)
    during = model.explain(images, registry).after_scores
    assert bool((during < plain).all())
    clock.now = START + timedelta(days=14, seconds=1)
    assert registry.audit("line-1", action="normality.expire") == []  # nothing happens without an inspection
    after = model.explain(images, registry)
    assert after.names == [] and torch.equal(after.after_scores, plain)
    expiries = registry.audit("line-1", action="normality.expire")
    assert len(expiries) == 1 and expiries[0].details["until"] == until
    newest = registry.audit("line-1", limit=1)[0]
    assert newest.action == "normality.expire"  # the first inspection after expiry wrote it
    model.explain(images, registry)
    assert len(registry.audit("line-1", action="normality.expire")) == 1  # once
    states = {n.name: n.state for n in registry.normalities("line-1", ("active", "staged", "expired"))}
    assert states == {"broken": "expired"}


def test_without_the_registry_an_expired_normality_still_stops_applying(
    line: tuple[Registry, LineModel, FakeClock, torch.Tensor],
) -> None:
    registry, model, clock, images = line
    plain = model.explain(images, registry).after_scores
    model.add(registry, "broken", 1.0, "alice", until=(START + timedelta(hours=1)).isoformat())
    clock.now = START + timedelta(hours=2)
    assert torch.equal(model.explain(images).after_scores, plain)
    assert registry.audit("line-1", action="normality.expire") == []
    model.explain(images, registry)  # the next inspection with the registry still audits it
    assert len(registry.audit("line-1", action="normality.expire")) == 1


def test_a_normality_another_process_added_expires_at_this_process_s_first_inspection(
    line: tuple[Registry, LineModel, FakeClock, torch.Tensor],
) -> None:
    registry, model, clock, images = line
    plain = model.explain(images, registry).after_scores
    other = LineModel.load(registry, "line-1")  # e.g. the CLI, while the service runs `model`
    other.add(registry, "broken", 1.0, "alice", until=(START + timedelta(hours=1)).isoformat())
    clock.now = START + timedelta(hours=2)  # nothing inspected in between
    after = model.explain(images, registry)
    assert after.names == [] and torch.equal(after.after_scores, plain)
    assert len(registry.audit("line-1", action="normality.expire")) == 1
