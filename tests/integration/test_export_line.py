"""A whole line exported as ONNX and OpenVINO: equal to the torch line, and refused when it does not fit.

Exported with ``normadd export`` on ``tiny-random`` (random weights: the maps mean nothing, but
the graph and the torch line must agree on them); the ViT-L-14-336 check is in
``benchmarks/bench_runtimes.py`` (too heavy for the test suite).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normadd.cli import app
from normadd.config import LineConfig, NormalitySetting
from normadd.export.exporter import build_manifest
from normadd.export.manifest import ExportedNormality, LineManifest
from normadd.export.runtime import ExportedLine, normality_differences
from normadd.factory import build_addition
from normadd.images import load_batch
from normadd.serve.settings import ServiceConfig

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("onnxscript")
runner = CliRunner()
MAP_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-5
LINE = ["--class-name", "bottle", "--backbone", "tiny-random", "--add", "broken", "--add", "contamination:0.5"]


def _config() -> LineConfig:
    return LineConfig(
        class_name="bottle",
        backbone="tiny-random",
        normalities=[NormalitySetting("broken"), NormalitySetting("contamination", 0.5)],
    )


def _images(bottle_dir: Path) -> list[Path]:
    return [
        bottle_dir / "test" / "broken_large" / "000.png",
        bottle_dir / "test" / "good" / "000.png",
        bottle_dir / "test" / "contamination" / "000.png",
    ]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny-random line with two normalities, exported once per format by the CLI."""
    root = tmp_path_factory.mktemp("exports")
    folders = {}
    for fmt in ("onnx", "openvino"):
        result = runner.invoke(app, ["export", *LINE, "--format", fmt, "--out", str(root / fmt)])
        assert result.exit_code == 0, result.output
        folders[fmt] = root / fmt
    return folders


@pytest.mark.parametrize(("fmt", "runtime"), [("onnx", "onnx"), ("openvino", "openvino"), ("onnx", "openvino")])
def test_exported_line_gives_the_torch_lines_maps_and_scores(
    exports: dict[str, Path], bottle_dir: Path, fmt: str, runtime: str
) -> None:
    torch_line = build_addition(_config())
    exported = ExportedLine(exports[fmt], runtime)
    _, images, _ = load_batch(_images(bottle_dir), exported.input_size)
    assert images is not None
    expected, result = torch_line.explain(images), exported.explain(images)  # batch 3: the batch is dynamic
    assert result.names == expected.names == ["broken", "contamination"]
    for name in ("before", "suppression", "keep", "after"):
        got, want = getattr(result, name), getattr(expected, name)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= MAP_TOLERANCE, name
    for name in ("before_scores", "after_scores", "detector_scores"):
        assert (getattr(result, name) - getattr(expected, name)).abs().max() <= SCORE_TOLERANCE, name
    assert (result.after <= result.before + 1e-6).all()
    one = exported.explain(images[:1])  # and a batch of one
    assert (one.after - expected.after[:1]).abs().max() <= MAP_TOLERANCE


def test_manifest_round_trips_and_names_the_line(exports: dict[str, Path]) -> None:
    manifest = LineManifest.read(exports["onnx"])
    assert LineManifest.from_dict(json.loads(manifest.to_json()), "again") == manifest
    expected = build_manifest(build_addition(_config()), _config(), "line.onnx", "onnx")
    assert manifest == expected
    assert manifest.input_size == 80 and manifest.map_size == 256 and manifest.random_weights
    assert [(n.name, n.text, n.strength) for n in manifest.normalities] == [
        ("broken", "broken", 1.0),
        ("contamination", "contamination", 0.5),
    ]
    assert all(n.phrases for n in manifest.normalities)
    assert manifest.weights_sha256 is None  # random weights: no file to hash
    assert manifest.threshold is None
    decided = _config()
    decided.threshold = 0.42
    assert build_manifest(build_addition(decided), decided, "line.onnx", "onnx").threshold == 0.42


def test_normality_differences_are_named() -> None:
    exported = [ExportedNormality("broken", "broken", 1.0), ExportedNormality("scratch", "scratch", 0.5)]
    assert normality_differences(exported, [("broken", "broken", 1.0), ("scratch", "scratch", 0.5)]) == []
    problems = normality_differences(exported, [("broken", "broken", 0.7), ("dent", "dent", 1.0)])
    assert problems == [
        "active on the line but not in the export: dent",
        "in the export but not active on the line: scratch",
        "'broken' has strength 1 in the export, 0.7 on the line",
    ]


def test_cli_inspect_runs_the_export_like_torch(exports: dict[str, Path], bottle_dir: Path, tmp_path: Path) -> None:
    images = list(map(str, _images(bottle_dir)))
    torch_run = runner.invoke(app, ["inspect", *images, *LINE, "--out", str(tmp_path / "torch")])
    assert torch_run.exit_code == 0, torch_run.output
    onnx_run = runner.invoke(
        app, ["inspect", *images, "--runtime", "onnx", "--export", str(exports["onnx"]), "--out", str(tmp_path / "ort")]
    )
    assert onnx_run.exit_code == 0, onnx_run.output
    openvino = ["--runtime", "openvino", "--export", str(exports["openvino"])]
    checked = runner.invoke(app, ["inspect", *images, *LINE, *openvino, "--out", str(tmp_path / "ov")])
    assert checked.exit_code == 0, checked.output

    def scores(folder: Path) -> list[tuple[float, float]]:
        with (folder / "scores.csv").open() as handle:
            return [(float(r["score_before"]), float(r["score_after"])) for r in csv.DictReader(handle)]

    for folder in ("ort", "ov"):
        for (b1, a1), (b2, a2) in zip(scores(tmp_path / "torch"), scores(tmp_path / folder), strict=True):
            assert abs(b1 - b2) <= SCORE_TOLERANCE and abs(a1 - a2) <= SCORE_TOLERANCE
    assert "onnxruntime" in (tmp_path / "ort" / "scores.csv").read_text()


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _no_map_onnx(path: Path) -> Path:
    """A valid ONNX model with an image input but no map output (features and a pooled vector)."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", 3, 80, 80])
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", 3, 80, 80])
    pooled = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["B", 3, 1, 1])
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["input"], ["features"]),
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        ],
        "no-map",
        [image],
        [features, pooled],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_bad_exports_are_one_line_naming_the_file_and_fix(
    exports: dict[str, Path], bottle_dir: Path, tmp_path: Path
) -> None:
    image = str(_images(bottle_dir)[0])
    out = ["--out", str(tmp_path / "out")]

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    line = _error(["inspect", image, *LINE[:4], "--detector", "onnx", "--model", str(garbage), *out])
    assert str(garbage) in line and "not an ONNX model" in line

    no_map = _no_map_onnx(tmp_path / "no_map.onnx")
    line = _error(["inspect", image, *LINE[:4], "--detector", "onnx", "--model", str(no_map), *out])
    assert str(no_map) in line and "no 'anomaly_map' output" in line

    folder = _copy(exports["onnx"], tmp_path / "a")
    shutil.copy(no_map, folder / "line.onnx")
    line = _error(["inspect", image, "--runtime", "onnx", "--export", str(folder), *out])
    assert "line.onnx" in line and "not a normadd line export" in line

    for key, value, expected in (
        ("input_size", 96, "manifest says 96x96"),
        ("normadd_version", "0.0.1", "exported by normadd 0.0.1"),
    ):
        folder = _copy(exports["onnx"], tmp_path / key)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest[key] = value
        (folder / "manifest.json").write_text(json.dumps(manifest))
        line = _error(["inspect", image, "--runtime", "onnx", "--export", str(folder), *out])
        assert str(folder) in line and expected in line and "re-export" in line

    folder = _copy(exports["openvino"], tmp_path / "xml")
    (folder / "line.bin").unlink()
    line = _error(["inspect", image, "--runtime", "openvino", "--export", str(folder), *out])
    assert "line.xml" in line and "no weights file line.bin" in line
    line = _error(["inspect", image, *LINE[:4], "--detector", "openvino", "--model", str(folder / "line.xml"), *out])
    assert "no weights file line.bin" in line

    export = ["--runtime", "onnx", "--export", str(exports["onnx"])]
    line = _error(["inspect", image, *LINE[:4], "--add", "scratch", *export, *out])
    assert "not this line" in line and "active on the line but not in the export: scratch" in line


def _service_settings(tmp_path: Path, export: Path, normalities: list[NormalitySetting]) -> ServiceConfig:

    config = LineConfig(class_name="bottle", backbone="tiny-random", normalities=normalities)
    return ServiceConfig(
        line="bottle-line",
        line_config=config,
        database=tmp_path / "normadd.db",
        api_keys={"station-1": "station-1-secret"},
        device="cpu",
        runtime="onnx",
        export=export,
    )


def test_service_runs_the_export_and_refuses_normality_changes(
    exports: dict[str, Path], bottle_dir: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from normadd.registry.store import NormalityRecord, Registry
    from normadd.serve.app import create_app

    auth = {"X-API-Key": "station-1-secret"}
    settings = _service_settings(tmp_path, exports["onnx"], _config().normalities)
    image = _images(bottle_dir)[0]
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/v1/lines/bottle-line/inspect", headers=auth, files=[("images", (image.name, image.read_bytes()))]
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "onnxruntime" in body["model"]
        assert [n["name"] for n in body["normalities"]] == ["broken", "contamination"]
        expected = build_addition(_config()).explain(load_batch([image], 80)[1])  # type: ignore[arg-type]
        assert abs(body["results"][0]["score_after"] - float(expected.after_scores[0])) <= SCORE_TOLERANCE

        refused = client.post("/v1/lines/bottle-line/normalities", headers=auth, json={"text": "scratch"})
        assert refused.status_code == 409 and refused.json()["error"] == "export_mismatch"
        assert "re-export" in refused.json()["detail"]

        with Registry(settings.database) as registry:  # another process (the CLI) changes the line
            scratch = NormalityRecord("scratch", "scratch", 1.0, ["scratched bottle"])
            registry.add_normality("bottle-line", scratch, "bob")
        stale = client.post(
            "/v1/lines/bottle-line/inspect", headers=auth, files=[("images", (image.name, image.read_bytes()))]
        )
        assert stale.status_code == 409, stale.text
        assert "active on the line but not in the export: scratch" in stale.json()["detail"]


def test_service_refuses_an_export_of_other_normalities_at_start(exports: dict[str, Path], tmp_path: Path) -> None:
    from normadd.export.line_model import ExportMismatchError
    from normadd.serve.app import create_app

    settings = _service_settings(tmp_path, exports["onnx"], [NormalitySetting("broken")])
    with pytest.raises(ExportMismatchError, match="in the export but not active on the line: contamination"):
        create_app(settings)


def test_cli_serve_refuses_an_export_of_other_normalities(exports: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "line.yaml"
    config.write_text(
        "class_name: bottle\nbackbone: tiny-random\nnormalities: [broken]\ndatabase: normadd.db\n"
        "service:\n  api_keys: {station-1: station-1-secret}\n"
    )
    line = _error(["serve", "--config", str(config), "--runtime", "onnx", "--export", str(exports["onnx"])])
    assert str(exports["onnx"]) in line and "in the export but not active on the line: contamination" in line
    line = _error(["serve", "--config", str(config), "--runtime", "onnx"])
    assert "--export DIR" in line


def test_export_refuses_an_unknown_format_and_an_unexportable_line(tmp_path: Path) -> None:
    line = _error(["export", "-c", "bottle", "--backbone", "tiny-random", "--format", "tflite", "--out", str(tmp_path)])
    assert "--format 'tflite' is unknown: choose one of onnx, openvino" in line
    image = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad" / "bottle" / "train" / "good"
    config = tmp_path / "line.yaml"
    config.write_text(f"class_name: bottle\nbackbone: tiny-random\nexamples: [{image / '000.png'}]\n")
    line = _error(["export", "--config", str(config), "--out", str(tmp_path / "out")])
    assert "visual normalities" in line and "cannot be exported" in line
    config.write_text("class_name: bottle\nbackbone: tiny-random\ndetector: maps\nmaps: saved-maps\n")
    line = _error(["export", "--config", str(config), "--out", str(tmp_path / "out")])
    assert "only APRIL-GAN lines can be exported" in line and "'maps'" in line


def test_inspect_decides_with_the_threshold_in_the_manifest(
    exports: dict[str, Path], bottle_dir: Path, tmp_path: Path
) -> None:
    folder = _copy(exports["onnx"], tmp_path / "decided")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["threshold"] = 0.5  # the line's threshold travels in the manifest (not a graph constant)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    images = list(map(str, _images(bottle_dir)))
    result = runner.invoke(app, ["inspect", *images, "--export", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "OpenVINO" in (tmp_path / "out" / "scores.csv").read_text()  # --runtime auto runs an export on OpenVINO
    assert "verdicts at threshold 0.5" in result.output


def test_a_letterbox_line_exports_its_resize_and_threshold_and_runs_like_torch(
    bottle_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    wide = tmp_path / "images" / "wide.png"  # not square: letterbox and squash give other pixels
    wide.parent.mkdir()
    Image.open(bottle_dir / "test" / "broken_large" / "000.png").crop((0, 150, 900, 750)).save(wide)
    config = tmp_path / "line.yaml"
    config.write_text(
        "class_name: bottle\nbackbone: tiny-random\nresize: letterbox\nthreshold: 0.3\n"
        "normalities: [broken, 'contamination:0.5']\n"
    )
    folder = tmp_path / "export"
    made = runner.invoke(app, ["export", "--config", str(config), "--format", "onnx", "--out", str(folder)])
    assert made.exit_code == 0, made.output
    manifest = LineManifest.read(folder)
    assert manifest.resize == "letterbox" and manifest.threshold == 0.3

    torch_run = runner.invoke(app, ["inspect", str(wide), "--config", str(config), "--out", str(tmp_path / "torch")])
    assert torch_run.exit_code == 0, torch_run.output
    export = ["--export", str(folder), "--runtime", "onnx"]
    ort_run = runner.invoke(app, ["inspect", str(wide), *export, "--out", str(tmp_path / "ort")])
    assert ort_run.exit_code == 0, ort_run.output
    squashed = runner.invoke(
        app, ["inspect", str(wide), "--config", str(config), "--resize", "squash", "--out", str(tmp_path / "sq")]
    )
    assert squashed.exit_code == 0, squashed.output

    def rows(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
        with (folder / "scores.csv").open() as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)

    (torch_columns, torch_rows), (ort_columns, ort_rows) = rows(tmp_path / "torch"), rows(tmp_path / "ort")
    assert ort_columns == torch_columns and "verdict_after" in ort_columns  # the same columns and verdicts
    for mine, theirs in zip(ort_rows, torch_rows, strict=True):
        for score in ("score_before", "score_after", "score_detector"):
            assert abs(float(mine[score]) - float(theirs[score])) <= SCORE_TOLERANCE, score
        assert (mine["verdict_before"], mine["verdict_after"], mine["threshold"]) == (
            theirs["verdict_before"],
            theirs["verdict_after"],
            theirs["threshold"],
        )
    _, squash_rows = rows(tmp_path / "sq")
    assert abs(float(squash_rows[0]["score_before"]) - float(torch_rows[0]["score_before"])) > SCORE_TOLERANCE

    line = _error(["inspect", str(wide), *export, "--resize", "squash", "--out", str(tmp_path / "refused")])
    assert "resize 'letterbox' in the export, 'squash' on the line" in line
    bad = _copy(folder, tmp_path / "bad")
    data = json.loads((bad / "manifest.json").read_text())
    data["resize"] = "stretch"
    (bad / "manifest.json").write_text(json.dumps(data))
    line = _error(["inspect", str(wide), "--export", str(bad), "--runtime", "onnx", "--out", str(tmp_path / "bad-out")])
    assert "resize 'stretch'" in line and "re-export" in line
