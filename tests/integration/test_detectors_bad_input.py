"""Bad input to the detectors of issue 5: each is one error line naming the file and the fix, exit code 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from normadd.cli import app

runner = CliRunner()


def _inspect(bottle_dir: Path, tmp_path: Path, *args: str) -> str:
    image = bottle_dir / "test" / "good" / "000.png"
    result = runner.invoke(
        app,
        [
            "inspect",
            str(image),
            "-c",
            "bottle",
            "--add",
            "broken",
            "--backbone",
            "tiny-random",
            "--out",
            str(tmp_path / "out"),
            *args,
        ],
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return " ".join(result.output.split())  # the console may wrap the one line


WINCLIP = ("--detector", "winclip", "--detector-backbone", "tiny-random-winclip")


def test_few_shot_without_reference_images(bottle_dir: Path, tmp_path: Path) -> None:
    assert "--shots 1 needs --reference DIR" in _inspect(bottle_dir, tmp_path, *WINCLIP, "--shots", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _inspect(bottle_dir, tmp_path, *WINCLIP, "--shots", "1", "--reference", str(empty))
    assert str(empty) in message and "holds no images" in message


def test_fewer_reference_images_than_shots(bottle_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "refs"
    folder.mkdir()
    (folder / "a.png").write_bytes((bottle_dir / "train" / "good" / "000.png").read_bytes())
    message = _inspect(bottle_dir, tmp_path, *WINCLIP, "--shots", "5", "--reference", str(folder))
    assert "holds 1 image(s) but 5 are needed" in message


def test_unreadable_reference_image_is_named(bottle_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "refs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    message = _inspect(bottle_dir, tmp_path, *WINCLIP, "--shots", "1", "--reference", str(folder))
    assert "broken.png" in message and "replace or remove it" in message


def test_memory_bank_built_with_other_settings(bottle_dir: Path, tmp_path: Path) -> None:
    from normadd.detectors.patchcore import PatchCoreDetector

    bank = tmp_path / "bank.pt"
    import torch

    PatchCoreDetector("resnet18", input_size=64).fit([torch.rand(2, 3, 64, 64)]).save(bank)
    message = _inspect(
        bottle_dir,
        tmp_path,
        "--detector",
        "patchcore",
        "--detector-backbone",
        "resnet18",
        "--detector-weights",
        "random",
        "--memory-bank",
        str(bank),
    )
    assert str(bank) in message and "input_size 64 (now 256)" in message and "refit it" in message


def test_patchcore_without_reference_or_bank(bottle_dir: Path, tmp_path: Path) -> None:
    message = _inspect(
        bottle_dir,
        tmp_path,
        "--detector",
        "patchcore",
        "--detector-backbone",
        "resnet18",
        "--detector-weights",
        "random",
    )
    assert "--reference DIR" in message


def test_patchcore_without_backbone_weights(bottle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    message = _inspect(bottle_dir, tmp_path, "--detector", "patchcore", "--reference", str(tmp_path))
    assert "no weights for PatchCore backbone 'wide_resnet50_2'" in message and "--detector-weights random" in message


def test_winclip_without_weights_names_the_detector_option(bottle_dir: Path, tmp_path: Path) -> None:
    message = _inspect(bottle_dir, tmp_path, "--detector", "winclip")
    assert "no weights for backbone 'ViT-B-16-plus-240'" in message and "--detector-weights PATH" in message
    # The hint for running without weights names the detector's flag, not --backbone/--weights (issue 16).
    assert "--detector-weights random" in message and "--backbone tiny-random" not in message
    assert "--weights" not in message.replace("--detector-weights", "")


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (None, "no map for image"),
        (np.full((8, 8), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((3, 8, 8), dtype=np.float32), "not one 2-D map"),
    ],
)
def test_bad_saved_maps(bottle_dir: Path, tmp_path: Path, array: np.ndarray | None, expected: str) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / ("000.npy" if array is not None else "999.npy"), array if array is not None else np.zeros((4, 4)))
    message = _inspect(bottle_dir, tmp_path, "--detector", "maps", "--maps", str(maps))
    assert expected in message and ("000" in message)


def test_unknown_detector_lists_the_known_ones(bottle_dir: Path, tmp_path: Path) -> None:
    message = _inspect(bottle_dir, tmp_path, "--detector", "fastflow")
    assert "aprilgan, winclip, patchcore, maps, anomalib" in message
