"""One shared set of line options: every line command takes them; every hint names one of its flags."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from normadd.backbone.specs import BACKBONES
from normadd.cli import app
from normadd.runtime import PRECISIONS

runner = CliRunner()
SRC = Path(__file__).resolve().parents[2] / "src" / "normadd"
SHARED_LINE_FLAGS = {
    "--config",
    "--class-name",
    "--object-name",
    "--backbone",
    "--weights",
    "--projections",
    "--layers",
    "--image-size",
    "--resize",
    "--image-score",
    "--detector",
    "--detector-backbone",
    "--detector-weights",
    "--shots",
    "--reference",
    "--maps",
    "--memory-bank",
    "--coreset",
    "--model",
}
# Flags of the commands that run a line (inspect, serve): how it runs, the same meaning on both.
RUN_FLAGS = {"--runtime", "--export"}
# Commands that build a full line (APRIL-GAN or another detector plus the normality detector).
LINE_COMMANDS = (("inspect",), ("evaluate",), ("serve",), ("line", "create"), ("calibrate",), ("export",))
RUN_COMMANDS = (("inspect",), ("serve",))
# Commands that score many images: --ray/--ray-address send their image passes to Ray, the same way on both.
BATCH_FLAGS = {"--ray", "--ray-address"}
BATCH_COMMANDS = (("inspect",), ("evaluate",))
# train-projections builds the CLIP encoder and reads a dataset, never a detector.
TRAIN_FLAGS = {"--config", "--object-name", "--backbone", "--weights", "--layers", "--image-size", "--resize"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
# Flags a command's code paths can never print, each with the reason.
_RUNS_NO_EXPORT = "only inspect and serve run a line export (resolve_line_runtime is called there alone)"
NEVER_PRINTED = {
    "evaluate": {
        "--class-name": "evaluate names each class by its folder (--classes); config_from_options gets a placeholder",
        "--runtime": _RUNS_NO_EXPORT,
        "--export": _RUNS_NO_EXPORT,
    },
    "line": {"--runtime": _RUNS_NO_EXPORT, "--export": _RUNS_NO_EXPORT},
    "calibrate": {"--runtime": _RUNS_NO_EXPORT, "--export": _RUNS_NO_EXPORT},
    "export": {"--runtime": _RUNS_NO_EXPORT, "--export": _RUNS_NO_EXPORT},
}


def _command(*path: str) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _flags(command: Any) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", []) if opt.startswith("--")}


@pytest.mark.parametrize("path", LINE_COMMANDS, ids=" ".join)
def test_every_line_command_takes_every_shared_line_option(path: tuple[str, ...]) -> None:
    missing = SHARED_LINE_FLAGS - _flags(_command(*path)) - set(NEVER_PRINTED.get(path[0], {}))
    assert not missing, f"normadd {' '.join(path)} lacks {sorted(missing)}"


@pytest.mark.parametrize("path", RUN_COMMANDS, ids=" ".join)
def test_every_command_that_runs_a_line_takes_runtime_and_export_with_one_help(path: tuple[str, ...]) -> None:
    assert _flags(_command(*path)) >= RUN_FLAGS
    helps = {
        flag: {p.help for name in RUN_COMMANDS for p in _command(*name).params if flag in getattr(p, "opts", [])}
        for flag in RUN_FLAGS
    }
    assert all(len(texts) == 1 for texts in helps.values()), helps


@pytest.mark.parametrize("path", BATCH_COMMANDS, ids=" ".join)
def test_every_batch_command_takes_ray_and_ray_address_with_one_help(path: tuple[str, ...]) -> None:
    assert _flags(_command(*path)) >= BATCH_FLAGS
    helps = {
        flag: {p.help for name in BATCH_COMMANDS for p in _command(*name).params if flag in getattr(p, "opts", [])}
        for flag in BATCH_FLAGS
    }
    assert all(len(texts) == 1 for texts in helps.values()), helps


def test_every_hint_of_the_ray_pipeline_names_a_flag_every_batch_command_takes() -> None:
    hints = _hint_flags(("batch",))
    assert "--ray-address" in hints
    hints.pop("--head", None)  # quoted from Ray's own command: 'ray start --head'
    for path in BATCH_COMMANDS:
        missing = {flag: files for flag, files in hints.items() if flag not in _flags(_command(*path))}
        assert not missing, f"normadd {' '.join(path)} prints hints naming flags it lacks: {missing}"


def test_train_projections_takes_the_encoder_line_options() -> None:
    assert _flags(_command("train-projections")) >= TRAIN_FLAGS


def _message_strings(path: Path) -> list[str]:
    """Every string literal of a module except docstrings: the texts that can reach a user."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _hint_flags(folders: tuple[str, ...]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for folder in folders:
        base = SRC / folder
        for path in [base] if base.is_file() else sorted(base.rglob("*.py")):
            for flag in FLAG.findall(" ".join(_message_strings(path))):
                found.setdefault(flag, set()).add(path.name)
    return found


def test_every_hint_of_line_building_code_names_a_flag_every_line_command_takes() -> None:
    hints = _hint_flags(("backbone", "detectors", "normality", "prompts", "config.py", "factory.py", "images.py"))
    for path in LINE_COMMANDS:
        flags = _flags(_command(*path)) | set(NEVER_PRINTED.get(path[0], {}))
        missing = {flag: files for flag, files in hints.items() if flag not in flags}
        assert not missing, f"normadd {' '.join(path)} prints hints naming flags it lacks: {missing}"


def test_every_hint_of_encoder_and_training_code_names_a_flag_train_projections_takes() -> None:
    hints = _hint_flags(("backbone", "training"))
    flags = _flags(_command("train-projections"))
    missing = {flag: files for flag, files in hints.items() if flag not in flags}
    assert not missing, f"train-projections prints hints naming flags it lacks: {missing}"


def test_every_hint_of_evaluation_code_names_a_flag_evaluate_takes() -> None:
    hints = _hint_flags(("evaluation",))
    flags = _flags(_command("evaluate"))
    missing = {flag: files for flag, files in hints.items() if flag not in flags}
    assert not missing, f"evaluate prints hints naming flags it lacks: {missing}"


@pytest.mark.parametrize("path", [("inspect",), ("evaluate",), ("train-projections",)], ids=" ".join)
def test_precision_help_lists_every_accepted_value(path: tuple[str, ...]) -> None:
    option = next(p for p in _command(*path).params if "--precision" in getattr(p, "opts", []))
    for value in PRECISIONS:
        assert value in (option.help or ""), f"--precision help of {path} does not list {value}"


def test_backbones_prints_every_name_whole_on_a_narrow_terminal() -> None:
    result = runner.invoke(app, ["backbones"], env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    printed = {line.split()[0] for line in result.output.splitlines() if line.strip()}
    assert set(BACKBONES) <= printed
    assert "…" not in result.output


def test_backbones_all_lists_open_clip_models_with_their_tags() -> None:
    result = runner.invoke(app, ["backbones", "--all"], env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    assert "ViT-B-16:laion2b_s34b_b88k" in result.output.split()


def test_serve_applies_the_line_options_and_keeps_allow_broken_audit_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    import normadd.serve.app

    seen: dict[str, Any] = {}
    monkeypatch.setattr(normadd.serve.app, "create_app", lambda settings: seen.setdefault("settings", settings))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    config = tmp_path / "line.yaml"
    config.write_text("class_name: bottle\nbackbone: tiny-random\nservice:\n  api_keys: {k: secret-1}\n")
    args = ["serve", "--config", str(config), "--resize", "letterbox", "--object-name", "glass bottle"]
    result = runner.invoke(app, [*args, "--allow-broken-audit-chain"])
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert settings.line_config.resize == "letterbox" and settings.line_config.object_name == "glass bottle"
    assert settings.allow_broken_audit_chain is True
    seen.clear()
    assert runner.invoke(app, args).exit_code == 0
    assert seen["settings"].allow_broken_audit_chain is False and seen["settings"].line_config.resize == "letterbox"
