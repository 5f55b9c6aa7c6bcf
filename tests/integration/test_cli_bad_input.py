"""Bad input gets one clear line and exit code 2, never a traceback; good images still run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from normadd.cli import app

runner = CliRunner()


def _good_image(path: Path, mode: str = "RGB", size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        array = rng.integers(0, 65535, size=(size, size), dtype=np.uint16)
        Image.fromarray(array).save(path)
    else:
        Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def _inspect(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["inspect", *args])
    return result.exit_code, result.output


def _assert_one_clear_line(output: str, *words: str) -> None:
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if line.startswith(("error:", "skipped:"))]
    assert error_lines, output
    for word in words:
        assert word in output, output


def test_corrupt_truncated_and_empty_files_are_listed_while_the_rest_of_the_batch_runs(tmp_path: Path) -> None:
    good = _good_image(tmp_path / "good.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png at all")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out = tmp_path / "out"
    code, output = _inspect(
        str(good),
        str(empty),
        str(corrupt),
        str(truncated),
        "-c",
        "bottle",
        "--add",
        "broken",
        "--backbone",
        "tiny-random",
        "--out",
        str(out),
    )
    assert code == 2
    _assert_one_clear_line(output, "empty.png", "corrupt.png", "truncated.png", "3 image(s) could not be read")
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [Path(r["image"]).name for r in rows] == ["good.png"]
    assert (out / "good_after.png").is_file()


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16"])
def test_rgba_grayscale_palette_and_16_bit_images_are_converted(tmp_path: Path, mode: str) -> None:
    image = _good_image(tmp_path / f"image_{mode.replace(';', '')}.png", mode)
    code, output = _inspect(str(image), "-c", "bottle", "--backbone", "tiny-random", "--out", str(tmp_path / "o"))
    assert code == 0, output


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import normadd.images

    monkeypatch.setattr(normadd.images, "MAX_PIXELS", 1000)
    big = _good_image(tmp_path / "big.png", size=64)
    code, output = _inspect(str(big), "-c", "bottle", "--backbone", "tiny-random", "--out", str(tmp_path / "o"))
    assert code == 2
    _assert_one_clear_line(output, "decompression bomb")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--add", ""], ["normality text is empty"]),
        (["--add", "   "], ["normality text is empty"]),
        (["--add", "a very long defect description that goes on and on and on forever"], ["too long"]),
        (["--add", "broken:7"], ["strength", "[0, 1]"]),
        (["--backbone", "resnet-9000"], ["unknown backbone", "ViT-L-14-336", "tiny-random"]),
        (["--backbone", "ViT-L-14-336"], ["--weights", "NORMADD_WEIGHTS"]),
        (["--weights", "/nonexistent/weights.pt"], ["does not exist"]),
        (["--projections", "/nonexistent/proj.pth"], ["does not exist", "--projections"]),
        (["--device", "tpu"], ["unknown device"]),
        (["--layers", "1,2,9"], ["do not exist", "1..4"]),
    ],
)
def test_bad_settings_give_one_line_and_exit_code_2(tmp_path: Path, args: list[str], words: list[str]) -> None:
    image = _good_image(tmp_path / "x.png")
    base = [str(image), "-c", "bottle", "--out", str(tmp_path / "o")]
    if "--backbone" not in args:
        base += ["--backbone", "tiny-random"]
    code, output = _inspect(*base, *args)
    assert code == 2, output
    _assert_one_clear_line(output, *words)


def test_mismatched_weights_file_names_the_backbone(tmp_path: Path) -> None:
    import torch

    weights = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(3, 3, 3, 3)}, weights)
    image = _good_image(tmp_path / "x.png")
    code, output = _inspect(
        str(image), "-c", "bottle", "--backbone", "tiny-random", "--weights", str(weights), "--out", str(tmp_path / "o")
    )
    assert code == 2
    _assert_one_clear_line(output, "do not fit backbone 'tiny-random'")


def test_missing_image_path_and_empty_folder(tmp_path: Path) -> None:
    code, output = _inspect(str(tmp_path / "nope.png"), "-c", "bottle", "--backbone", "tiny-random")
    assert code == 2
    _assert_one_clear_line(output, "does not exist")
    (tmp_path / "empty").mkdir()
    code, output = _inspect(str(tmp_path / "empty"), "-c", "bottle", "--backbone", "tiny-random")
    assert code == 2
    _assert_one_clear_line(output, "no images")


def test_cuda_request_without_gpu_falls_back_with_a_note(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    image = _good_image(tmp_path / "x.png")
    code, output = _inspect(
        str(image), "-c", "bottle", "--backbone", "tiny-random", "--device", "cuda", "--out", str(tmp_path / "o")
    )
    assert code == 0, output
    assert "no CUDA device found" in output
