"""``--ray``: inspect and evaluate run their image passes on a real local Ray runtime and write the local files.

One private runtime for the module (``ray.init(address="local", num_cpus=2)``; the commands use it
as a process already connected to Ray). Ray is in requirements/ci.txt: these tests run in CI, and
fail there rather than skip when it is missing.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from typer.testing import CliRunner

from normadd.cli import app

runner = CliRunner()
MODULE_LIMIT_S = 600  # the whole module on a busy 2-core machine; a hang fails instead of blocking CI
INSPECTED = {"good": 3, "broken_large": 3, "broken_small": 2, "contamination": 2}
EVALUATED = {"good": 3, "broken_large": 3, "broken_small": 3, "contamination": 3}
TRAIN_GOOD = 6


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is missing in CI: pip install -r requirements/ci.txt")
        pytest.skip("ray is not installed (pip install 'normadd[ray]'); CI always runs these tests")
    return ray


def _timed_out(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError(f"the Ray tests ran past {MODULE_LIMIT_S} s")


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[Any]:
    """A private 2-CPU Ray runtime for this module, stopped at its end; the module is bounded in time."""
    ray = _import_ray()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.delenv("RAY_ADDRESS", raising=False)
        previous = signal.signal(signal.SIGALRM, _timed_out)
        signal.alarm(MODULE_LIMIT_S)
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
        )
        try:
            yield ray
        finally:
            ray.shutdown()
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


def _first(folder: Path, count: int) -> list[Path]:
    return sorted(folder.glob("*.png"))[:count]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _assert_same_rows(ours: Path, theirs: Path) -> None:
    """The same header, identical rows in the same order; numbers equal to 1e-6."""
    assert ours.read_text().splitlines()[:1] == theirs.read_text().splitlines()[:1], ours.name
    a, b = _rows(ours), _rows(theirs)
    assert len(a) == len(b), (ours, len(a), len(b))
    for row_a, row_b in zip(a, b, strict=True):
        for key in row_a:
            x, y = row_a[key], row_b[key]
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                assert x == y, (ours.name, key, x, y)
                continue
            assert (math.isnan(fx) and math.isnan(fy)) or abs(fx - fy) <= 1e-6, (ours.name, key, x, y)


def _invoke(args: list[str]) -> Any:
    return runner.invoke(app, args)


def test_inspect_on_ray_writes_the_local_files_rows_and_order(
    ray_runtime: Any, bottle_dir: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "in" / "corrupt.png"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a png")
    images = [p for folder, n in INSPECTED.items() for p in _first(bottle_dir / "test" / folder, n)]
    images.insert(4, corrupt)  # an unreadable image in the second batch: a per-image row, the rest runs
    common = ["--class-name", "bottle", "--add", "broken", "--add", "contamination:0.5", "--backbone", "tiny-random"]
    common += ["--batch-size", "4", "--threshold", "3.9", "--save-maps", "npy"]
    local = _invoke(["inspect", *map(str, images), *common, "--out", str(tmp_path / "local")])
    on_ray = _invoke(["inspect", *map(str, images), *common, "--out", str(tmp_path / "ray"), "--ray"])
    assert local.exit_code == on_ray.exit_code == 2, on_ray.output  # 2: one image could not be read
    assert "image passes on the Ray runtime this process is connected to" in on_ray.output
    assert "could not be read" in on_ray.output and "Traceback" not in on_ray.output
    _assert_same_rows(tmp_path / "ray" / "scores.csv", tmp_path / "local" / "scores.csv")
    rows = _rows(tmp_path / "ray" / "scores.csv")
    assert [r["image"] for r in rows] == [str(p) for p in images if p != corrupt]
    assert {r["verdict_before"] for r in rows} <= {"OK", "NG"}
    ours, theirs = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("ray", "local"))
    assert ours["failures"] == theirs["failures"] and [f["path"] for f in ours["failures"]] == [str(corrupt)]
    assert ours["normalities"] == theirs["normalities"] and ours["model"] == theirs["model"]
    assert [i["output_stem"] for i in ours["images"]] == [i["output_stem"] for i in theirs["images"]]
    written = {d: sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("ray", "local")}
    assert written["ray"] == written["local"]


def _subset(bottle: Path, root: Path, name: str = "bottle") -> Path:
    """A small bottle set (symlinks) as class ``name``: a few test images per type, their masks, a few train/good."""
    for folder, count in EVALUATED.items():
        for image in _first(bottle / "test" / folder, count):
            target = root / name / "test" / folder / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(image)
            mask = bottle / "ground_truth" / folder / f"{image.stem}_mask.png"
            if mask.is_file():
                (root / name / "ground_truth" / folder).mkdir(parents=True, exist_ok=True)
                (root / name / "ground_truth" / folder / mask.name).symlink_to(mask)
    for image in _first(bottle / "train" / "good", TRAIN_GOOD):
        target = root / name / "train" / "good" / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(image)
    return root


def test_evaluate_on_ray_writes_the_local_csvs(ray_runtime: Any, bottle_dir: Path, tmp_path: Path) -> None:
    data = _subset(bottle_dir, tmp_path / "data")
    common = ["--data", str(data), "--classes", "bottle", "--backbone", "tiny-random", "--no-cache"]
    common += ["--batch-size", "4", "--false-reject", "0.2"]
    local = _invoke(["evaluate", *common, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    on_ray = _invoke(["evaluate", *common, "--out", str(tmp_path / "ray"), "--ray-address", "local"])
    assert on_ray.exit_code == 0, on_ray.output
    assert "Traceback" not in on_ray.output
    assert len(_rows(tmp_path / "ray" / "results.csv")) == 2  # bottle's two groups (too few for several.csv)
    for name in ("results", "summary", "selectivity", "pixel", "several", "decisions"):
        _assert_same_rows(tmp_path / "ray" / f"{name}.csv", tmp_path / "local" / f"{name}.csv")
    # The same passes were counted; the wall time differs, and the text cache is warm after the first run.
    varying = ("wall time (s)", "prompts sent through the text tower (rest from the text cache)")
    cost = {d: {r["item"]: r["value"] for r in _rows(tmp_path / d / "cost.csv")} for d in ("ray", "local")}
    assert {k: v for k, v in cost["ray"].items() if k not in varying} == {
        k: v for k, v in cost["local"].items() if k not in varying
    }
    assert cost["ray"]["detector passes (images)"] == str(sum(EVALUATED.values()) + TRAIN_GOOD)


def test_an_unreachable_ray_address_is_one_line_exit_2_and_nothing_written(tmp_path: Path, bottle_dir: Path) -> None:
    _import_ray()
    out = tmp_path / "out"
    image = _first(bottle_dir / "test" / "good", 1)[0]
    args = ["inspect", str(image), "--class-name", "bottle", "--backbone", "tiny-random", "--out", str(out)]
    result = _invoke([*args, "--ray-address", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "127.0.0.1:1" in lines[0] and "ray start --head" in lines[0]
    assert not out.exists()
    evaluation = _invoke(["evaluate", "--data", str(tmp_path), "--out", str(out), "--ray-address", "127.0.0.1:1"])
    assert evaluation.exit_code == 2 and "127.0.0.1:1" in evaluation.output and not out.exists()


def test_without_the_ray_extra_one_line_names_it(
    tmp_path: Path, bottle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    out = tmp_path / "out"
    image = _first(bottle_dir / "test" / "good", 1)[0]
    args = ["inspect", str(image), "--class-name", "bottle", "--backbone", "tiny-random", "--out", str(out), "--ray"]
    result = _invoke(args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'normadd[ray]'" in lines[0], result.output
    assert not out.exists()


def test_evaluate_on_ray_loads_the_model_once_per_actor_for_all_classes_and_passes(
    ray_runtime: Any, bottle_dir: Path, tmp_path: Path
) -> None:
    """Two classes x (test records + train/good): one job, one pool, each actor loads the backbone once."""
    import numpy as np

    from normadd.batch.ray_pipeline import RayImagePass, connect
    from normadd.config import LineConfig
    from normadd.evaluation.runner import EvaluationSettings, evaluate

    data = _subset(bottle_dir, tmp_path / "data")
    _subset(bottle_dir, data, "vial")  # a second class of the same images: one group per defect type
    line = LineConfig(class_name="bottle", backbone="tiny-random")
    settings = EvaluationSettings(data=data, line=line, batch_size=4, use_cache=False, false_reject=0.2)
    local = evaluate(settings)
    with connect() as session:
        image_pass = RayImagePass(session)
        on_ray = evaluate(settings, image_pass=image_pass)
    assert [c.name for c in on_ray.classes] == [c.name for c in local.classes] == ["bottle", "vial"]
    for ours, theirs in zip(on_ray.classes, local.classes, strict=True):
        np.testing.assert_allclose(ours.scores_before, theirs.scores_before, atol=1e-6)
        np.testing.assert_allclose(ours.scores_after, theirs.scores_after, atol=1e-6)
        assert [d.threshold for d in ours.decisions] == pytest.approx([d.threshold for d in theirs.decisions], abs=1e-6)
        assert ours.decisions and len(ours.decisions) == len(theirs.decisions)
    assert on_ray.notes == local.notes
    passes = 2 * 2  # records and train/good scores of each class
    # One pool for the run: at most one actor per CPU of the runtime (2), fewer than the passes it
    # ran (a pool per pass would have had at least one actor per pass), and each loaded one encoder.
    assert 1 <= len(image_pass.loads) <= session.actors < passes, image_pass.loads
    assert set(image_pass.loads.values()) == {1}, image_pass.loads
