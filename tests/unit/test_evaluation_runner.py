"""The runner on a small synthetic MVTec-layout dataset with the tiny random backbone."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from normadd.cli import app
from normadd.config import LineConfig
from normadd.errors import InvalidMapError, NormaddError
from normadd.evaluation import runner as runner_module
from normadd.evaluation.runner import EvaluationSettings, Evaluator, line_config
from normadd.factory import build_addition
from normadd.normality.addition import NormalityAddition


def _noise_png(path: Path, seed: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "L":
        array = np.zeros((48, 48), dtype=np.uint8)
        array[10 + seed % 20 : 20 + seed % 20, 12:30] = 255
        Image.fromarray(array, mode="L").save(path)
    else:
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)


def _make_class(root: Path, name: str, types: tuple[str, ...], per_type: int = 3) -> None:
    seed = 0
    for defect in ("good", *types):
        for index in range(per_type):
            seed += 1
            _noise_png(root / name / "test" / defect / f"{index:03d}.png", seed)
            if defect != "good":
                _noise_png(root / name / "ground_truth" / defect / f"{index:03d}_mask.png", seed, mode="L")


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("normadd-cache")


@pytest.fixture(autouse=True)
def _shared_text_cache(monkeypatch: pytest.MonkeyPatch, text_cache: Path) -> None:
    # Prompts of one class are encoded once for the module; the feature cache stays off so every
    # test still runs its own detector pass.
    monkeypatch.setenv("NORMADD_CACHE_DIR", str(text_cache))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _make_class(root, "widget", ("scratch", "dent", "stain"))
    _make_class(root, "blank", ())  # no defects at all
    _make_class(root, "single", ("crack",))  # one group only: one label left
    return root


def _settings(data: Path, classes: list[str], **changes: object) -> EvaluationSettings:
    line = LineConfig(class_name="widget", backbone="tiny-random")
    settings = EvaluationSettings(data=data, classes=classes, line=line, batch_size=4, use_cache=False)
    return dataclasses.replace(settings, **changes)


def test_every_measurement_comes_from_one_pass_per_image_and_one_text_per_group(dataset: Path) -> None:
    result = Evaluator(_settings(dataset, ["widget"])).run()
    (widget,) = result.classes
    assert [r.group for r in widget.rows] == ["dent", "scratch", "stain"]
    assert result.cost.images == 12 and result.cost.detector_passes == 12 and result.cost.clip_passes == 12
    assert result.cost.group_texts == 3
    assert all(r.paper_before is None for r in widget.rows)  # the paper has no "widget"
    assert len(widget.selectivity) == 6  # each added group against the two others
    assert [p.images for p in widget.pixel] == [9, 9, 9]  # good + the two other types
    assert [s.held_out for s in widget.several] == ["dent", "scratch", "stain"]
    assert widget.several[0].added == ("scratch", "stain")
    assert widget.scores_after.shape == (12, 3)
    assert (widget.scores_after <= widget.scores_before[:, None] * (1 + 1e-3) + 1e-3).all()


def test_bad_classes_are_noted_and_the_run_goes_on(dataset: Path) -> None:
    notes: list[str] = []
    result = Evaluator(_settings(dataset, ["missing", "blank", "single", "widget"]), on_note=notes.append).run()
    assert [c.name for c in result.classes] == ["single", "widget"]
    assert any("class 'missing' has no folder" in n and "classes found: blank, single, widget" in n for n in notes)
    assert any("class 'blank' has no defect images" in n for n in notes)
    assert any("single: group 'crack' leaves one label only" in n for n in notes)
    single = result.classes[0]
    assert single.rows[0].auroc_before is None and single.mean_before is None
    assert result.headline_before == result.classes[1].mean_before  # a class without AUROC does not count


def test_a_wrong_size_mask_drops_that_image_from_the_pixel_metrics_only(dataset: Path) -> None:
    Image.new("L", (10, 10)).save(dataset / "widget" / "ground_truth" / "dent" / "000_mask.png")
    notes: list[str] = []
    result = Evaluator(_settings(dataset, ["widget"]), on_note=notes.append).run()
    assert any("000_mask.png is 10x10 but its image is 48x48" in n for n in notes)
    assert result.classes[0].pixel[1].images == 8  # scratch added: good + dent (one dropped) + stain
    assert result.cost.images == 12


def test_detectors_that_learn_from_normal_images_get_the_class_train_folder(dataset: Path) -> None:
    if "detector" not in {f.name for f in dataclasses.fields(LineConfig)}:
        pytest.skip("no detector factory in this normadd")
    config = line_config(_settings(dataset, ["widget"], detector="patchcore"), "widget")
    assert config.detector == "patchcore"
    assert config.reference == str(dataset / "widget" / "train" / "good")
    assert config.class_name == "widget" and config.normalities == []


def test_nothing_usable_is_one_clear_error(dataset: Path) -> None:
    with pytest.raises(NormaddError, match="could be evaluated"):
        Evaluator(_settings(dataset, ["blank"])).run()


def test_an_unknown_detector_is_one_clear_error(dataset: Path) -> None:
    with pytest.raises(NormaddError, match="nonsense"):
        Evaluator(_settings(dataset, ["widget"], detector="nonsense")).run()


def test_the_cli_reads_a_groups_file_and_lists_valid_types_for_a_bad_group(dataset: Path, tmp_path: Path) -> None:
    groups = tmp_path / "groups.yaml"
    groups.write_text("widget:\n  marks: [scratch, stain]\n  dent: [dent]\n  bent: [bent]\n")
    out = tmp_path / "out"
    args = ["evaluate", "--data", str(dataset), "--classes", "widget", "--groups", str(groups)]
    result = CliRunner().invoke(app, [*args, "--backbone", "tiny-random", "--out", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "group 'bent' names defect type(s) bent that do not exist (valid: dent, scratch, stain)" in output
    with (out / "results.csv").open() as handle:
        assert [row["group"] for row in csv.DictReader(handle)] == ["marks", "dent"]
    assert (out / "several.csv").read_text().count("\n") == 1  # two groups: nothing "several" to add


def test_the_cli_refuses_a_missing_dataset_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: dataset folder {tmp_path / 'nowhere'} does not exist: fix --data"
    ]


def test_an_image_the_detector_refuses_is_skipped_and_its_batch_goes_on(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    white = dataset / "widget" / "test" / "dent" / "001.png"
    Image.new("RGB", (48, 48), (255, 255, 255)).save(white)
    real = runner_module.compute_records

    def refusing(addition, pixels):  # type: ignore[no-untyped-def]
        if (pixels.flatten(1).mean(dim=1) > 0.99).any():  # stands for a saved map with NaN values
            raise InvalidMapError("the detector's anomaly map has NaN or infinite values")
        return real(addition, pixels)

    monkeypatch.setattr(runner_module, "compute_records", refusing)
    notes: list[str] = []
    result = Evaluator(_settings(dataset, ["widget"]), on_note=notes.append).run()
    assert result.cost.images == 11
    assert [n for n in notes if "image skipped" in n] == [
        f"widget: image skipped: {white}: the detector's anomaly map has NaN or infinite values"
    ]


def test_a_class_its_detector_cannot_be_built_for_is_skipped(dataset: Path) -> None:
    def build(config: LineConfig, runtime: object) -> NormalityAddition:
        if config.class_name == "single":
            raise NormaddError("PatchCore: no --reference DIR of normal images to fit one: pass --reference DIR")
        return build_addition(config)

    notes: list[str] = []
    result = Evaluator(_settings(dataset, ["single", "widget"]), on_note=notes.append, build=build).run()
    assert [c.name for c in result.classes] == ["widget"]
    assert "skipped class: single: PatchCore: no --reference DIR" in " ".join(notes)


def test_wrong_weights_stop_the_run_with_their_one_line(dataset: Path, tmp_path: Path) -> None:
    line = LineConfig(class_name="widget", backbone="tiny-random", weights=str(tmp_path / "missing.pt"))
    with pytest.raises(NormaddError, match=r"missing\.pt \(from --weights\) does not exist"):
        Evaluator(_settings(dataset, ["single", "widget"], line=line)).run()


@pytest.mark.parametrize(("detector", "loads"), [("aprilgan", 1), ("winclip", 2)])
def test_an_evaluation_of_three_classes_loads_each_encoder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detector: str, loads: int
) -> None:
    from normadd.backbone import clip_encoder

    for name in ("widget", "gadget", "gizmo"):
        _make_class(tmp_path, name, ("scratch", "dent"), per_type=1)
    built: list[str] = []
    create_model = clip_encoder._create_model

    def counting_create_model(spec, weights):  # type: ignore[no-untyped-def]
        built.append(spec.name)
        return create_model(spec, weights)

    monkeypatch.setattr(clip_encoder, "_create_model", counting_create_model)
    line = LineConfig(class_name="widget", backbone="tiny-random", detector_backbone="tiny-random-winclip")
    settings = EvaluationSettings(data=tmp_path, line=line, detector=detector, batch_size=4, use_cache=False)
    evaluator = Evaluator(settings)
    result = evaluator.run()
    assert sorted(c.name for c in result.classes) == ["gadget", "gizmo", "widget"]
    assert len(built) == loads == evaluator.encoders.loads  # tiny-random (and WinCLIP's tiny-random-winclip)


class _InProcessJob:
    """An :class:`~normadd.evaluation.runner.ImagePass` running the job here, recording what it was given."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str, int]]] = []

    def run_all(
        self, requests: list[runner_module.PassRequest], batch_size: int, resize: str
    ) -> Iterator[runner_module.PassBatch]:
        self.calls.append([(r.kind, r.config.class_name, len(r.paths)) for r in requests])
        for number, request in enumerate(requests):
            model = build_addition(request.config)
            compute = runner_module.record_outcomes if request.kind == "records" else runner_module.good_score_outcomes
            for start in range(0, len(request.paths), batch_size):
                yield number, compute(model, request.paths[start : start + batch_size], resize)


def test_an_image_pass_gets_every_class_and_pass_as_one_job_and_gives_the_local_results(dataset: Path) -> None:
    for index in range(4):
        _noise_png(dataset / "widget" / "train" / "good" / f"{index:03d}.png", 100 + index)
    _make_class(dataset, "gadget", ("scratch", "dent"))
    settings = _settings(dataset, ["widget", "blank", "gadget"], false_reject=0.25)
    local = Evaluator(settings).run()
    job = _InProcessJob()
    remote = Evaluator(settings, image_pass=job).run()
    assert job.calls == [[("records", "widget", 12), ("good_scores", "widget", 4), ("records", "gadget", 9)]]
    assert [c.name for c in remote.classes] == [c.name for c in local.classes] == ["widget", "gadget"]
    for ours, theirs in zip(remote.classes, local.classes, strict=True):
        np.testing.assert_allclose(ours.scores_after, theirs.scores_after, atol=1e-6)
        assert [d.threshold for d in ours.decisions] == [d.threshold for d in theirs.decisions]
    assert remote.notes == local.notes  # in class order, as the local run says them
    unchanged = {"seconds": 0, "prompts_encoded": 0}  # wall time; the text cache is warm after the first run
    assert dataclasses.replace(remote.cost, **unchanged) == dataclasses.replace(local.cost, **unchanged)


def test_the_pass_stream_skips_requests_nobody_reads_and_raises_a_batch_error_in_its_request() -> None:
    outcome = runner_module.ImageOutcome
    batches: list[runner_module.PassBatch] = [
        (0, [outcome(Path("a"))]),
        (1, [outcome(Path("b"))]),
        (1, NormaddError("refused")),
        (1, [outcome(Path("c"))]),
        (2, [outcome(Path("d"))]),
    ]
    stream = runner_module._PassStream(iter(batches))
    seen: list[str] = []
    with pytest.raises(NormaddError, match="refused"):
        for item in stream.take(1):  # request 0 was never read: passed over
            seen.append(item.path.name)
    assert seen == ["b"]
    assert [o.path.name for o in stream.take(2)] == ["d"]  # the rest of request 1 is passed over
    assert list(stream.take(3)) == []
