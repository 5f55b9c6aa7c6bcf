"""anomalib's own ONNX and OpenVINO exports, wrapped as normadd detectors, on the real bottle images.

The test fits a small anomalib PatchCore (resnet18, random init: nothing downloads) on a few normal
bottles, exports it with anomalib's own ``to_onnx`` (batch fixed to 2, as anomalib's default
export does), converts that ONNX file to OpenVINO IR as anomalib's ``to_openvino`` does, and checks
that the wrapped exports give the torch model's maps and scores, and that a normality added to each
keeps after <= before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from normadd.cli import app
from normadd.detectors.anomalib_adapter import AnomalibDetector
from normadd.detectors.exported import ExportedAnomalibDetector
from normadd.detectors.inference_sessions import openvino_telemetry_off
from normadd.images import load_batch
from normadd.normality.addition import NormalityAddition
from normadd.normality.text_normality import NormalityDetector

anomalib = pytest.importorskip("anomalib")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("onnxscript")
TOLERANCE = 1e-4  # measured ~2e-5 (onnxruntime) and ~5e-5 (OpenVINO f32) on maps in 0..1
runner = CliRunner()


def _test_images(bottle_dir: Path) -> list[Path]:
    return [
        bottle_dir / "test" / "broken_large" / "000.png",
        bottle_dir / "test" / "good" / "000.png",
        bottle_dir / "test" / "contamination" / "000.png",
    ]


@pytest.fixture(scope="module")
def exported_patchcore(tmp_path_factory: pytest.TempPathFactory, bottle_dir: Path):
    """A fitted anomalib Patchcore and the folder of its ONNX and OpenVINO exports."""
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    root = tmp_path_factory.mktemp("anomalib")
    for kind, source, names in (
        ("good", bottle_dir / "train" / "good", ("000.png", "001.png", "002.png", "003.png")),
        ("bad", bottle_dir / "test" / "broken_large", ("001.png", "002.png")),
    ):
        (root / "data" / kind).mkdir(parents=True)
        for name in names:
            shutil.copy(source / name, root / "data" / kind / name)
    torch.manual_seed(0)
    model = Patchcore(backbone="resnet18", pre_trained=False, coreset_sampling_ratio=0.1)
    data = Folder(
        name="bottle",
        root=root / "data",
        normal_dir="good",
        abnormal_dir="bad",
        num_workers=0,
        train_batch_size=4,
        eval_batch_size=4,
    )
    engine = Engine(accelerator="cpu", logger=False, default_root_dir=root / "results", enable_progress_bar=False)
    engine.fit(model=model, datamodule=data)
    model.eval()
    onnx_path = model.to_onnx(root / "export")
    # anomalib's to_openvino is to_onnx + ov.convert_model + ov.save_model (fp32 by default): the same
    # three steps on the ONNX file above save a second dynamo export here.
    import openvino as ov

    xml = root / "export" / "weights" / "openvino" / "model.xml"
    xml.parent.mkdir(parents=True)
    with openvino_telemetry_off():
        ov.save_model(ov.convert_model(onnx_path), xml, compress_to_fp16=False)
    return model, root / "export" / "weights"


def _clip_normality() -> NormalityDetector:
    from normadd.backbone.clip_encoder import ClipEncoder

    return NormalityDetector(ClipEncoder.from_name("tiny-random"), "bottle")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("runtime", "relative"), [("onnx", "onnx/model.onnx"), ("openvino", "openvino/model.xml")])
def test_anomalib_export_gives_the_torch_models_maps(
    exported_patchcore, bottle_dir: Path, runtime: str, relative: str
) -> None:
    model, weights = exported_patchcore
    exported = ExportedAnomalibDetector.from_file(weights / relative, runtime)
    assert exported.batch == 2  # anomalib's default export fixes the batch; three images need padding
    _, images, _ = load_batch(_test_images(bottle_dir), exported.input_size)
    assert images is not None
    expected = AnomalibDetector(model, input_size=exported.input_size).detect(images)
    result = exported.detect(images)
    assert result.maps.shape == expected.maps.shape == (3, 256, 256)
    assert float(expected.maps.amax() - expected.maps.amin()) > 0.1  # the maps carry signal to compare
    assert (result.maps - expected.maps).abs().max() <= TOLERANCE
    assert (result.scores - expected.scores).abs().max() <= TOLERANCE
    native = ExportedAnomalibDetector.from_file(weights / relative, runtime, image_score="native").detect(images)
    assert native.scores.shape == (3,)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("runtime", "relative"), [("onnx", "onnx/model.onnx"), ("openvino", "openvino/model.xml")])
def test_a_normality_added_to_an_anomalib_export(exported_patchcore, bottle_dir: Path, runtime: str, relative: str):
    _, weights = exported_patchcore
    detector = ExportedAnomalibDetector.from_file(weights / relative, runtime)
    addition = NormalityAddition(detector, ["broken"], normality_detector=_clip_normality())
    _, images, _ = load_batch(_test_images(bottle_dir), addition.input_size)
    assert images is not None
    result = addition.explain(images)
    assert result.suppression.shape == (3, 1, 256, 256)
    assert (result.after <= result.before + 1e-7).all()
    assert (result.after_scores <= result.before_scores + 1e-7).all()
    assert (result.after < result.before).any()


@pytest.mark.filterwarnings("ignore")
def test_cli_inspects_with_an_anomalib_openvino_export(exported_patchcore, bottle_dir: Path, tmp_path: Path) -> None:
    _, weights = exported_patchcore
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "inspect",
            *map(str, _test_images(bottle_dir)[:2]),
            "--class-name",
            "bottle",
            "--backbone",
            "tiny-random",
            "--add",
            "broken",
            "--detector",
            "openvino",
            "--model",
            str(weights / "openvino" / "model.xml"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "anomalib export model.xml on OpenVINO" in (out / "scores.csv").read_text()
