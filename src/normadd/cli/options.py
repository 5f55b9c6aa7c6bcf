"""The line options every command that builds a product line shares, and the one step to a LineConfig.

A command that builds a line (``inspect``, ``evaluate``, ``serve``, ``train-projections``,
``line create``, ``calibrate``) declares its parameters with these ``Annotated`` types, so each
option has one name, one help text and one meaning everywhere, and passes them to
:func:`line_from_options`::

    from normadd.cli import options as opt

    def my_command(
        config_file: opt.ConfigFile = None,
        class_name: opt.ClassName = None,
        backbone: opt.Backbone = None,
        ...
    ) -> None:
        config = opt.line_from_options(config_file, class_name, backbone=backbone, ...)

Any option left at None keeps the config file's value (or the :class:`LineConfig` default), so
``--config line.yaml --backbone tiny-random`` means the file with one setting changed. Every error
hint in normadd names one of these flags, and every command that can print such a hint takes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from normadd.config import LineConfig, apply_overrides, config_from_options
from normadd.errors import NormaddError
from normadd.runtime import DEVICES, PRECISIONS

ConfigFile = Annotated[Path | None, typer.Option("--config", help="Product line YAML file (options override it).")]
ClassName = Annotated[str | None, typer.Option("--class-name", "-c", help="Product class, e.g. bottle.")]
ObjectName = Annotated[
    str | None,
    typer.Option(
        "--object-name",
        help="The object word in the prompts, e.g. 'magnetic tile' (default: the class name, '_' as spaces).",
    ),
]
Backbone = Annotated[
    str | None,
    typer.Option(
        help="ViT-L-14-336 (default), tiny-random, an open_clip model with its pretrained tag "
        "(ViT-B-16:laion2b_s34b_b88k) or an open_clip model config JSON file; 'normadd backbones' lists names."
    ),
]
Weights = Annotated[Path | None, typer.Option(help="open_clip weights (.pt/.pth/.bin/.safetensors) of --backbone.")]
Projections = Annotated[
    str | None,
    typer.Option(
        help="APRIL-GAN projections: a checkpoint path or a name (aprilgan-visa, aprilgan-mvtec) "
        "found via NORMADD_PROJECTIONS or the cache, else downloaded when online (NORMADD_PROJECTIONS_URL: a mirror)."
    ),
]
Layers = Annotated[str | None, typer.Option(help="Tapped blocks of --backbone, e.g. 6,12,18,24.")]
ImageSize = Annotated[
    int | None, typer.Option(help="Side of the square the CLIP backbone runs at (ViT-L-14-336: 518).")
]
Resize = Annotated[
    str | None,
    typer.Option(help="How images (and masks) become square: squash (default, APRIL-GAN) or letterbox."),
]
ImageScore = Annotated[
    str | None,
    typer.Option(help="Image score: max (of the anomaly map, default) or clip (APRIL-GAN's pooled-embedding score)."),
]
Detector = Annotated[
    str | None,
    typer.Option(help="aprilgan (default), winclip, patchcore, maps, anomalib, onnx or openvino (with --model)."),
]
Model = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="anomalib export for --detector onnx (model.onnx) or openvino (model.xml beside its .bin).",
    ),
]
DetectorBackbone = Annotated[
    str | None,
    typer.Option(help="Detector's backbone (WinCLIP: ViT-B-16-plus-240; PatchCore: wide_resnet50_2)."),
]
DetectorWeights = Annotated[
    Path | None,
    typer.Option(help="Detector weights: open_clip file, torchvision state_dict or 'random', anomalib model."),
]
Shots = Annotated[int | None, typer.Option(help="WinCLIP reference images: 0 (zero-shot), 1 or 5.")]
Reference = Annotated[Path | None, typer.Option(help="Folder of normal images (WinCLIP+ shots, PatchCore fit).")]
Maps = Annotated[Path | None, typer.Option(help="Folder of saved anomaly maps (--detector maps).")]
MemoryBank = Annotated[
    Path | None, typer.Option(help="PatchCore memory bank: loaded if it exists, else fitted and saved.")
]
Coreset = Annotated[
    str | None,
    typer.Option(help="PatchCore coreset when fitting: exact (default, anomalib's picks) or fast (128-d projection)."),
]
# How a command that runs a line runs it (inspect, serve): not line settings, so not in LINE_OPTION_FIELDS.
Runtime = Annotated[
    str | None,
    typer.Option(
        help="auto (default: torch; with --export OpenVINO, else onnxruntime), torch, onnx or openvino "
        "(serve: default the config's service.runtime)."
    ),
]
Export = Annotated[
    Path | None,
    typer.Option(
        help="Folder written by 'normadd export': run that exported line (--runtime auto, onnx or openvino)."
    ),
]
# Where a batch command (inspect, evaluate) runs its image passes: not line settings either.
Ray = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Run the image passes on Ray (Ray Data, one model per actor; needs normadd[ray]): "
        "at --ray-address, else RAY_ADDRESS, else a private runtime on this machine.",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Ray to use (implies --ray): local (a private runtime here), auto (the cluster 'ray start' "
        "runs here) or host:6379 (a cluster's head).",
    ),
]
# Where a registry keeps retained part images (serve, normality preview, line show): not a line setting.
RetainedDir = Annotated[
    Path | None,
    typer.Option(
        "--retained-dir",
        help="Folder of the registry's retained part images (default: <file>.retained beside an SQLite "
        "registry, <database>.retained in the working folder for PostgreSQL); replicas on several "
        "machines share one folder on shared storage (serve: default the config's service.retained_dir).",
    ),
]
Device = Annotated[str, typer.Option(help=f"{', '.join(DEVICES[:-1])} or {DEVICES[-1]}.")]
Precision = Annotated[
    str,
    typer.Option(
        help=f"{', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}: auto is bf16 autocast on a GPU and on a CPU "
        "with native bf16 (AVX512_BF16 or AMX-BF16), else fp32; bf16 and fp16 autocast on a GPU (APRIL-GAN's "
        "code runs fp16), bf16 also on a CPU with native bf16."
    ),
]

# The LineConfig fields the shared options set, in the order commands declare them.
LINE_OPTION_FIELDS = (
    "object_name",
    "layers",
    "image_size",
    "resize",
    "image_score",
    "detector",
    "detector_backbone",
    "detector_weights",
    "shots",
    "reference",
    "maps",
    "memory_bank",
    "coreset",
    "model",
)


def parse_layers(layers: str | None) -> list[int] | None:
    """``"6,12,18,24"`` as ``[6, 12, 18, 24]``; None stays None.

    Raises:
        NormaddError: Anything but comma-separated whole numbers.
    """
    if layers is None:
        return None
    try:
        return [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise NormaddError(f"--layers '{layers}' must be comma-separated block numbers, e.g. 6,12,18,24") from None


def line_from_options(
    config_file: Path | None,
    class_name: str | None,
    *,
    backbone: str | None = None,
    weights: Path | None = None,
    projections: str | None = None,
    layers: str | None = None,
    **overrides: Any,
) -> LineConfig:
    """The line a command runs: ``--config`` (if given), then every shared option that was set.

    Args:
        config_file: ``--config``.
        class_name: ``--class-name`` (required without ``--config``).
        backbone: ``--backbone``.
        weights: ``--weights``.
        projections: ``--projections``.
        layers: ``--layers`` as typed (``"6,12,18,24"``).
        **overrides: Any other shared option by its :class:`LineConfig` field name
            (``object_name``, ``image_size``, ``resize``, ``image_score``, ``detector``, ...).

    Raises:
        NormaddError: A missing class name, a bad config file or a bad value (one line).
    """
    return config_from_options(
        config_file,
        class_name,
        backbone,
        weights,
        projections,
        layers=parse_layers(layers),
        **overrides,
    )


def ray_target(ray: bool, ray_address: str | None) -> str | None:
    """Where ``--ray``/``--ray-address`` send the image passes: None (this process) or an address (``""``: default).

    Raises:
        NormaddError: An empty ``--ray-address``.
    """
    if ray_address is not None:
        if not ray_address.strip():
            raise NormaddError("--ray-address is empty: give local, auto or host:6379")
        return ray_address.strip()
    return "" if ray else None


def apply_line_options(config: LineConfig, **overrides: Any) -> LineConfig:
    """Set the shared options that were given on a line read elsewhere (``serve``'s service YAML).

    Raises:
        NormaddError: A value the config refuses (one line).
    """
    return apply_overrides(config, **overrides)
