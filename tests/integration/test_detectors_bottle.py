"""Every detector of the paper on the real bottle images, tiny random backbones, one added normality."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from torch import Tensor, nn
from typer.testing import CliRunner

from normadd.cli import app
from normadd.config import LineConfig
from normadd.detectors.anomalib_adapter import IMAGENET_MEAN, IMAGENET_STD, AnomalibDetector
from normadd.factory import build_addition
from normadd.images import load_batch
from normadd.normality.addition import NormalityAddition
from normadd.normality.text_normality import NormalityDetector

runner = CliRunner()
TINY = {"backbone": "tiny-random"}


def _test_images(bottle_dir: Path) -> list[Path]:
    return [bottle_dir / "test" / "broken_large" / "000.png", bottle_dir / "test" / "good" / "000.png"]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory, bottle_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("reference")
    for name in ("000.png", "001.png", "002.png", "003.png", "004.png"):
        (folder / name).write_bytes((bottle_dir / "train" / "good" / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def patchcore_reference_dir(tmp_path_factory: pytest.TempPathFactory, bottle_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("patchcore-reference")
    for name in ("000.png", "001.png"):
        (folder / name).write_bytes((bottle_dir / "train" / "good" / name).read_bytes())
    return folder


def _run(addition: NormalityAddition, paths: list[Path]) -> None:
    _, images, failures = load_batch(paths, addition.input_size)
    assert not failures and images is not None
    result = addition.explain(images)
    assert result.before.shape == result.after.shape == (len(paths), 256, 256)
    assert bool((result.after <= result.before + 1e-6).all())
    assert result.suppression.shape[1] == 1 and torch.isfinite(result.after).all()


@pytest.mark.parametrize("shots", [0, 1, 5])
def test_winclip_zero_one_and_five_shot_with_an_added_normality(
    bottle_dir: Path, reference_dir: Path, shots: int
) -> None:
    config = LineConfig(
        class_name="bottle",
        detector="winclip",
        detector_backbone="tiny-random-winclip",
        shots=shots,
        reference=str(reference_dir) if shots else None,
        **TINY,
    )
    addition = build_addition(config)
    addition.add("broken")
    assert addition.detector.shots == shots and addition.input_size == 48
    assert not addition.shares_clip_pass
    _run(addition, _test_images(bottle_dir))


def test_other_detectors_and_the_normality_detector_run_in_one_batch_loop(bottle_dir: Path) -> None:
    addition = build_addition(
        LineConfig(class_name="bottle", detector="winclip", detector_backbone="tiny-random-winclip", **TINY)
    )
    addition.add("broken")
    calls = {"detect": 0, "clip": 0}
    detect, encode = addition.detector.detect, addition.normality_detector.encoder.encode_images

    def counted_detect(images: Tensor):
        calls["detect"] += 1
        return detect(images)

    def counted_encode(pixels: Tensor):
        calls["clip"] += 1
        assert pixels.shape[-1] == 80  # the normality encoder resized the 48 px batch itself
        return encode(pixels)

    addition.detector.detect = counted_detect  # type: ignore[method-assign]
    addition.normality_detector.encoder.encode_images = counted_encode  # type: ignore[method-assign]
    paths = sorted((bottle_dir / "test" / "good").glob("*.png"))[:4]
    _, images, _ = load_batch(paths, addition.input_size)
    assert images is not None and images.shape[-1] == 48
    addition.explain(images)
    assert calls == {"detect": 1, "clip": 1}


def test_patchcore_fits_saves_and_reloads_its_memory_bank(
    bottle_dir: Path, patchcore_reference_dir: Path, tmp_path: Path
) -> None:
    bank = tmp_path / "bank.pt"
    settings = {
        "class_name": "bottle",
        "detector": "patchcore",
        "detector_backbone": "resnet18",
        "detector_weights": "random",
        **TINY,
    }
    fitted = build_addition(LineConfig(reference=str(patchcore_reference_dir), memory_bank=str(bank), **settings))
    assert bank.is_file()
    fitted.add("broken")
    _run(fitted, _test_images(bottle_dir))
    reloaded = build_addition(LineConfig(memory_bank=str(bank), **settings))
    _, images, _ = load_batch(_test_images(bottle_dir), 256)
    assert torch.allclose(reloaded.detect(images).maps, fitted.detector.detect(images).maps)


def test_saved_maps_with_an_added_normality(bottle_dir: Path, tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    for path in _test_images(bottle_dir):
        np.save(maps / f"{path.stem}.npy", np.random.default_rng(0).random((64, 64), dtype=np.float32))
    addition = build_addition(LineConfig(class_name="bottle", detector="maps", maps=str(maps), **TINY))
    addition.add("broken")
    paths = _test_images(bottle_dir)[:1]
    addition.detector.prepare_batch(paths)
    _run(addition, paths)


class AnomalibShapedModel(nn.Module):
    """A stand-in with anomalib's output contract: a dict with ``anomaly_map`` (B, 1, H, W) and ``pred_score``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:
        maps = self.conv(pixels).abs()
        return {"anomaly_map": maps, "pred_score": maps.flatten(1).mean(1)}


def _clip_normality() -> NormalityDetector:
    from normadd.backbone.clip_encoder import ClipEncoder

    return NormalityDetector(ClipEncoder.from_name("tiny-random"), "bottle")


def test_anomalib_shaped_module_with_an_added_normality(bottle_dir: Path) -> None:
    detector = AnomalibDetector(AnomalibShapedModel(), input_size=64, image_score="native")
    addition = NormalityAddition(detector, ["broken"], normality_detector=_clip_normality())
    _run(addition, _test_images(bottle_dir))


@pytest.mark.filterwarnings("ignore:Argument embeddings is deprecated")
def test_real_anomalib_patchcore_model_with_an_added_normality(bottle_dir: Path, reference_dir: Path) -> None:
    patchcore = pytest.importorskip("anomalib.models.image.patchcore.torch_model")
    model = patchcore.PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False)
    _, references, _ = load_batch(sorted(reference_dir.glob("*.png"))[:2], 64)
    assert references is not None
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.train()
    model((references - mean) / std)
    model.subsample_embedding(sampling_ratio=0.1)
    addition = NormalityAddition(
        AnomalibDetector(model, input_size=64), ["broken"], normality_detector=_clip_normality()
    )
    _run(addition, _test_images(bottle_dir))


def _cli(args: list[str]) -> Result:
    return runner.invoke(
        app, ["inspect", *args, "--class-name", "bottle", "--add", "broken", "--backbone", "tiny-random"]
    )


def test_cli_winclip_five_shot(bottle_dir: Path, reference_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _cli(
        [
            *map(str, _test_images(bottle_dir)),
            "--detector",
            "winclip",
            "--detector-backbone",
            "tiny-random-winclip",
            "--shots",
            "5",
            "--reference",
            str(reference_dir),
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert "5-shot WinCLIP+" in record["model"] and record["shared_clip_pass"] is False
    assert len(list(csv.DictReader((out / "scores.csv").open()))) == 2


def test_cli_patchcore_then_saved_maps(bottle_dir: Path, patchcore_reference_dir: Path, tmp_path: Path) -> None:
    bank = tmp_path / "bank.pt"
    result = _cli(
        [
            *map(str, _test_images(bottle_dir)),
            "--detector",
            "patchcore",
            "--detector-backbone",
            "resnet18",
            "--detector-weights",
            "random",
            "--reference",
            str(patchcore_reference_dir),
            "--memory-bank",
            str(bank),
            "--out",
            str(tmp_path / "pc"),
        ]
    )
    assert result.exit_code == 0, result.output
    assert bank.is_file() and "PatchCore on resnet18" in (tmp_path / "pc" / "run.json").read_text()
    maps = tmp_path / "maps"
    maps.mkdir()
    for path in _test_images(bottle_dir):
        np.save(maps / f"{path.stem}.npy", np.ones((32, 32), dtype=np.float32))
    # Both test images are named 000.png: one saved map 000.npy serves both, as file stems match.
    result = _cli(
        [*map(str, _test_images(bottle_dir)), "--detector", "maps", "--maps", str(maps), "--out", str(tmp_path / "mp")]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "mp" / "scores.csv").open()))
    assert [float(r["score_before"]) for r in rows] == [1.0, 1.0]
