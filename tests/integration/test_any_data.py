"""Any data, any text, no surprises (issue 16): the CLI on odd files, odd names and hostile-looking texts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from normadd.cli import app

runner = CliRunner()
TINY = ("--backbone", "tiny-random")


def _inspect(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["inspect", *args])
    return result.exit_code, result.output


def _gray_jpeg(path: Path, size: tuple[int, int] = (90, 60), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0]), dtype=np.uint8)
    Image.fromarray(array, mode="L").save(path)
    return path


HOSTILE = ["dent (small)", "oil stain 10%", "{{7*7}}", "<script>alert(1)</script>", "a, \"quoted\"; DROP TABLE x;--"]


def test_hostile_looking_texts_are_accepted_and_stay_inert_in_every_output(tmp_path: Path) -> None:
    image = _gray_jpeg(tmp_path / "in" / "part.jpg")
    out = tmp_path / "out"
    adds = [arg for text in HOSTILE for arg in ("--add", text)]
    code, output = _inspect(
        str(image), "-c", "../../etc/passwd", "--object-name", "<b>{0}</b>", *adds, *TINY, "--out", str(out)
    )
    assert code == 0, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no text became a path
    with (out / "scores.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["normalities"] == "; ".join(f"{text}:1" for text in HOSTILE)
    record = json.loads((out / "run.json").read_text())
    assert [n["text"] for n in record["normalities"]] == HOSTILE
    phrases = [p for n in record["normalities"] for p in n["phrases"]]
    assert any("<b>{0}</b>" in p for p in phrases) and not any("49" in p for p in phrases)


def test_control_characters_in_a_file_name_reach_the_terminal_escaped(tmp_path: Path) -> None:
    good = _gray_jpeg(tmp_path / "in" / "good.jpg")
    evil = tmp_path / "in" / "evil\x1b[2J[bold]name.png"
    evil.write_bytes(b"not an image")
    code, output = _inspect(str(good), str(evil), "-c", "part", *TINY, "--out", str(tmp_path / "out"))
    assert code == 2, output
    assert "\x1b" not in output
    assert "evil\\x1b[2J[bold]name.png" in " ".join(output.split())  # escaped, and the markup shown as typed


def test_control_characters_in_a_text_are_one_escaped_error_line(tmp_path: Path) -> None:
    image = _gray_jpeg(tmp_path / "part.jpg")
    code, output = _inspect(str(image), "-c", "part", "--add", "scr\x1b]0;owned\x07atch", *TINY)
    assert code == 2
    assert "\x1b" not in output and "\x07" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "scr\\x1b]0;owned\\x07atch" in errors[0] and "control characters" in errors[0]


def test_no_readable_input_is_said_before_any_model_loads(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    # ViT-L-14-336 has no weights here: loading it first would fail with "no weights" instead.
    code, output = _inspect(str(bad), "-c", "part", "--backbone", "ViT-L-14-336")
    assert code == 2
    message = " ".join(output.split())
    assert "no readable input" in message and "no weights" not in message


def test_output_names_say_which_file_they_came_from_and_run_json_maps_them(tmp_path: Path) -> None:
    first = tmp_path / "images" / "a" / "rgb.bmp"
    second = tmp_path / "images" / "b" / "rgb.webp"
    first.parent.mkdir(parents=True)
    second.parent.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(first)
    Image.new("RGB", (30, 40), (10, 200, 10)).save(second)
    out = tmp_path / "out"
    code, output = _inspect(str(tmp_path / "images"), "-c", "part", *TINY, "--out", str(out))
    assert code == 0, output
    for name in ("rgb.bmp", "rgb.webp"):
        assert (out / f"{name}_after.png").is_file()
    mapping = {row["image"]: row["output_stem"] for row in json.loads((out / "run.json").read_text())["images"]}
    assert mapping == {str(first): "rgb.bmp", str(second): "rgb.webp"}


def test_object_name_is_the_word_in_the_prompts(tmp_path: Path) -> None:
    image = _gray_jpeg(tmp_path / "part.jpg")
    out = tmp_path / "named"
    args = ("-c", "mtd", "--object-name", "magnetic tile", "--add", "uneven")
    code, output = _inspect(str(image), *args, *TINY, "-o", str(out))
    assert code == 0, output
    phrases = json.loads((out / "run.json").read_text())["normalities"][0]["phrases"]
    assert "magnetic tile with an uneven area" in phrases and not any("mtd" in p for p in phrases)
    out = tmp_path / "default"
    code, output = _inspect(str(image), "-c", "metal_nut", "--add", "scratch", *TINY, "-o", str(out))
    assert code == 0, output
    phrases = json.loads((out / "run.json").read_text())["normalities"][0]["phrases"]
    assert "metal nut with a scratch" in phrases


def test_object_name_in_the_line_config(tmp_path: Path) -> None:
    from normadd.config import LineConfig

    config = LineConfig.from_dict({"class_name": "mtd", "object_name": "magnetic tile"})
    assert config.prompt_object == "magnetic tile"
    assert LineConfig(class_name="pcb_board").prompt_object == "pcb board"


@pytest.mark.parametrize("fmt", ["npy", "tiff"])
def test_letterboxed_non_square_images_and_raw_maps(tmp_path: Path, fmt: str) -> None:
    image = _gray_jpeg(tmp_path / "wide.jpg", size=(120, 40))
    out = tmp_path / "out"
    code, output = _inspect(
        str(image), "-c", "part", "--add", "scratch", *TINY, "--resize", "letterbox", "--save-maps", fmt, "-o", str(out)
    )
    assert code == 0, output
    loaded = {}
    for kind in ("before", "suppression", "after"):
        path = out / f"wide_{kind}.{fmt}"
        loaded[kind] = np.load(path) if fmt == "npy" else np.asarray(Image.open(path))
        assert loaded[kind].dtype == np.float32 and loaded[kind].ndim == 2
    assert (loaded["after"] <= loaded["before"] + 1e-6).all()
    assert ((loaded["suppression"] >= 0) & (loaded["suppression"] <= 1)).all()


def test_unknown_resize_and_map_format_are_one_line_each(tmp_path: Path) -> None:
    image = _gray_jpeg(tmp_path / "part.jpg")
    code, output = _inspect(str(image), "-c", "part", *TINY, "--resize", "crop")
    assert code == 2 and "resize 'crop' is unknown: choose squash or letterbox" in output
    code, output = _inspect(str(image), "-c", "part", *TINY, "--save-maps", "png")
    assert code == 2 and "--save-maps 'png' is unknown: choose npy or tiff" in output
    code, output = _inspect(str(image), "-c", "part", *TINY, "--coreset", "approx")
    assert code == 2 and "coreset 'approx' is unknown: use exact or fast" in output


def _mixed_size_references(folder: Path) -> Path:
    _gray_jpeg(folder / "a.jpg", size=(64, 48), seed=1)
    _gray_jpeg(folder / "b.png", size=(50, 90), seed=2)
    return folder


def test_patchcore_fits_on_references_of_different_sizes_with_a_progress_bar(tmp_path: Path) -> None:
    references = _mixed_size_references(tmp_path / "refs")
    image = _gray_jpeg(tmp_path / "part.jpg", size=(70, 30))
    code, output = _inspect(
        str(image), "-c", "part", "--add", "scratch", *TINY, "--detector", "patchcore",
        "--detector-backbone", "resnet18", "--detector-weights", "random", "--reference", str(references),
        "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, output
    assert "PatchCore fit: features" in output and "PatchCore fit: coreset" in output


def test_patchcore_fast_coreset_is_a_line_option_of_inspect(tmp_path: Path) -> None:
    references = _mixed_size_references(tmp_path / "refs")
    image = _gray_jpeg(tmp_path / "part.jpg", size=(70, 30))
    code, output = _inspect(
        str(image), "-c", "part", *TINY, "--detector", "patchcore", "--coreset", "fast",
        "--detector-backbone", "resnet18", "--detector-weights", "random", "--reference", str(references),
        "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, output
    assert "PatchCore fit: coreset" in output


def test_winclip_few_shot_takes_references_of_different_sizes(tmp_path: Path) -> None:
    references = _mixed_size_references(tmp_path / "refs")
    image = _gray_jpeg(tmp_path / "part.jpg", size=(70, 30))
    code, output = _inspect(
        str(image), "-c", "part", "--add", "scratch", *TINY, "--detector", "winclip",
        "--detector-backbone", "tiny-random-winclip", "--shots", "2", "--reference", str(references),
        "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, output


def _non_square_dataset(root: Path) -> Path:
    """A class folder 'mtd' whose images are 80x40 grayscale, one defect type with masks."""
    folder = root / "mtd"
    for index in range(2):
        _gray_jpeg(folder / "test" / "good" / f"{index:03d}.png", size=(80, 40), seed=index)
        _gray_jpeg(folder / "test" / "blow_hole" / f"{index:03d}.png", size=(80, 40), seed=10 + index)
        mask = np.zeros((40, 80), dtype=np.uint8)
        mask[10:20, 30:50] = 255
        (folder / "ground_truth" / "blow_hole").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(folder / "ground_truth" / "blow_hole" / f"{index:03d}_mask.png")
    return root


def test_evaluate_letterboxes_non_square_data_with_object_names_and_escapes_group_names(tmp_path: Path) -> None:
    root = _non_square_dataset(tmp_path / "data")
    groups = tmp_path / "groups.yaml"
    groups.write_text('object_names:\n  mtd: magnetic tile\nmtd:\n  "<b>blow & hole</b>": [blow_hole]\n')
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["evaluate", "--data", str(root), "--groups", str(groups), *TINY, "--resize", "letterbox", "--no-cache",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert "<b>blow" not in html and "&lt;b&gt;blow &amp; hole&lt;/b&gt;" in html


def test_evaluate_gives_each_class_its_object_name(tmp_path: Path) -> None:
    from normadd.config import LineConfig
    from normadd.evaluation.dataset import read_object_names
    from normadd.evaluation.runner import EvaluationSettings, line_config

    groups = tmp_path / "groups.yaml"
    groups.write_text("object_names:\n  mtd: magnetic tile\nmtd:\n  holes: [blow_hole]\n")
    settings = EvaluationSettings(
        data=tmp_path, line=LineConfig(class_name="x", resize="letterbox"), object_names=read_object_names(groups)
    )
    assert line_config(settings, "mtd").prompt_object == "magnetic tile"
    assert line_config(settings, "metal_nut").prompt_object == "metal nut"
    assert settings.resize == "letterbox"


def test_evaluate_object_name_needs_one_class(tmp_path: Path) -> None:
    root = _non_square_dataset(tmp_path / "data")
    result = runner.invoke(app, ["evaluate", "--data", str(root), *TINY, "--object-name", "magnetic tile"])
    assert result.exit_code == 2
    assert "--object-name names the object of one class" in " ".join(result.output.split())


def test_image_score_clip_writes_aprilgans_own_score_beside_the_map_scores(tmp_path: Path) -> None:
    image = _gray_jpeg(tmp_path / "part.jpg")
    scores = {}
    for mode in ("max", "clip"):
        out = tmp_path / mode
        code, output = _inspect(str(image), "-c", "part", *TINY, "--image-score", mode, "-o", str(out))
        assert code == 0, output
        with (out / "scores.csv").open(newline="") as handle:
            scores[mode] = next(csv.DictReader(handle))
    assert scores["max"]["score_before"] == scores["clip"]["score_before"]  # the NAND protocol is unchanged
    # max of the map at the detector's own size, against max after the resize to the map size
    assert abs(float(scores["max"]["score_detector"]) - float(scores["max"]["score_before"])) < 0.01
    assert 0.0 <= float(scores["clip"]["score_detector"]) <= 1.0
    assert scores["clip"]["score_detector"] != scores["max"]["score_detector"]


def test_registry_tables_show_markup_and_hostile_texts_as_typed(tmp_path: Path) -> None:
    db = str(tmp_path / "registry.db")
    created = runner.invoke(app, ["line", "create", "[red]line", "-c", "part", *TINY, "--db", db])
    assert created.exit_code == 0, created.output
    assert "[red]line" in created.output
    added = runner.invoke(app, ["normality", "add", "[red]line", "[bold]scratch</b>", "--db", db])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["normality", "list", "[red]line", "--db", db], env={"COLUMNS": "200"})
    assert "[bold]scratch</b>" in listed.output


def test_training_data_names_each_class_by_its_object_and_letterboxes_masks(tmp_path: Path) -> None:
    from normadd.training.dataset import MaskedImageDataset

    root = _non_square_dataset(tmp_path / "data")
    dataset = MaskedImageDataset.from_mvtec(root, 32, resize="letterbox", object_names={"mtd": "magnetic tile"})
    assert dataset.prompt_objects == ["magnetic tile"]
    index = next(i for i, sample in enumerate(dataset.samples) if sample.mask is not None)
    image, mask, _ = dataset[index]
    assert image[:, :8].max() == 0 and mask[:8].max() == 0  # letterbox border: black, no defect
    assert MaskedImageDataset.from_mvtec(root, 32).prompt_objects == ["mtd"]


def test_serve_options_override_the_service_yaml(tmp_path: Path) -> None:
    from normadd.cli.options import apply_line_options
    from normadd.serve.settings import ServiceConfig

    path = tmp_path / "service.yaml"
    path.write_text("class_name: part\nbackbone: tiny-random\nservice:\n  api_keys: {station: secret-key-1}\n")
    settings = ServiceConfig.from_yaml(path)
    line = apply_line_options(settings.line_config, object_name="magnetic tile", resize="letterbox")
    assert (line.prompt_object, line.resize, line.backbone) == ("magnetic tile", "letterbox", "tiny-random")


@pytest.mark.parametrize("command", ["evaluate", "train-projections"])
def test_no_readable_dataset_image_is_said_before_any_model_loads(tmp_path: Path, command: str) -> None:
    root = _non_square_dataset(tmp_path / "data")
    for image in (root / "mtd" / "test").rglob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    args = ["--data", str(root), "--backbone", "ViT-L-14-336", "--out", str(tmp_path / "out")]
    if command == "train-projections":
        args[-1] = str(tmp_path / "out.pth")
    result = runner.invoke(app, [command, *args])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "no weights" not in message  # ViT-L-14-336 has none here: the model was never loaded
    # evaluate: the whole run; train: its dataset check already names the first unreadable image with a mask
    assert "no readable input" in message if command == "evaluate" else "000.png: not an image file" in message


def test_visual_normality_examples_are_letterboxed_like_the_inspected_images(tmp_path: Path) -> None:
    from normadd.normality.visual import load_examples

    image = _gray_jpeg(tmp_path / "wide.jpg", size=(80, 40))
    mask = tmp_path / "wide_mask.png"
    array = np.zeros((40, 80), dtype=np.uint8)
    array[:, :40] = 255  # the left half
    Image.fromarray(array).save(mask)
    boxed = load_examples([image], [mask], 32, "letterbox")
    assert boxed.images[0, :, :8].max() == 0  # black border above, as inspect letterboxes
    assert boxed.masks[0] is not None and boxed.masks[0].shape == (80, 80)
    assert boxed.masks[0][:20].max() == 0 and boxed.masks[0][20:60, :40].min() == 1
    squashed = load_examples([image], [mask], 32)
    assert squashed.masks[0] is not None and squashed.masks[0].shape == (40, 80)


def test_evaluate_shows_the_patchcore_fit_and_takes_detector_weights(tmp_path: Path) -> None:
    root = _non_square_dataset(tmp_path / "data")
    _mixed_size_references(root / "mtd" / "train" / "good")
    result = runner.invoke(
        app,
        ["evaluate", "--data", str(root), *TINY, "--detector", "patchcore", "--detector-backbone", "resnet18",
         "--detector-weights", "random", "--no-cache", "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "PatchCore fit: features" in result.output and "PatchCore fit: coreset" in result.output


def test_evaluate_memory_bank_needs_one_class(tmp_path: Path) -> None:
    root = _non_square_dataset(tmp_path / "data")
    args = ["evaluate", "--data", str(root), *TINY, "--detector", "patchcore", "--memory-bank", str(tmp_path / "b.pt")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "--memory-bank holds one class's PatchCore memory" in " ".join(result.output.split())
