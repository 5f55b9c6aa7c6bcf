"""Throughput and peak memory of inspection: the detector alone vs with 1 and 3 normalities.

Random weights at the real sizes (the same compute as trained weights). Also times the text
side: 105 prompts padded to 77 tokens vs to the longest prompt, and a cached normality.

    python benchmarks/bench_inspect.py                      # tiny-random and ViT-L-14-336, batch 1 and 8
    python benchmarks/bench_inspect.py --backbones tiny-random --repeats 5
    python -m benchmarks.bench_inspect --precision-only --backbones ViT-L-14-336   # fp32 vs bf16 rows only
    python -m benchmarks.bench_inspect --precision-only --detectors winclip,patchcore --backbones tiny-random \
        --output bench_inspect_precision_detectors.csv

The precision rows run a detector (APRIL-GAN by default; WinCLIP or PatchCore with ``--detectors``)
with 3 normalities on bottle test images in fp32 and under bf16 autocast (whatever the CPU: the
``native_bf16`` column says whether it computes bf16 natively, which is when ``--precision auto``
picks it) and give images/s and the largest deviation of the before, suppression and after maps
and scores from fp32. ``--backbones`` is APRIL-GAN's, which is also the normality detector's.
Written to ``results/bench_inspect_precision.csv`` unless ``--output`` names another file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.common import RESULTS, machine_line, peak_memory, print_table, random_encoder, timed, write_csv
from normadd.detectors.aprilgan import AprilGanDetector
from normadd.detectors.base import Detector
from normadd.detectors.patchcore import PatchCoreDetector
from normadd.detectors.reference import find_reference_images, load_reference_images
from normadd.detectors.winclip import WinClipDetector
from normadd.images import load_batch
from normadd.normality.addition import NormalityAddition
from normadd.normality.text_normality import NormalityDetector
from normadd.prompts.phrases import OfflinePhraseGenerator
from normadd.prompts.templates import expand_templates
from normadd.prompts.text_embedding import TextEmbedder
from normadd.runtime import Runtime, cpu_bf16_flags, resolve_runtime

THREE_NORMALITIES = ("broken", "contamination", "scratch")
BOTTLE_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test"
BOTTLE_TRAIN = BOTTLE_TEST.parent / "train" / "good"
PRECISION_IMAGES = ("broken_large/000.png", "contamination/000.png")
PRECISION_DETECTORS = ("aprilgan", "winclip", "patchcore")
PATCHCORE_FIT_IMAGES = 4


def precision_addition(
    detector: str, backbone: str, runtime: Runtime, bank: Tensor | None = None
) -> NormalityAddition:
    """The detector with 3 normalities, built under ``runtime`` (random weights, real sizes).

    APRIL-GAN runs on ``backbone`` and is its own normality detector; WinCLIP (ViT-B-16-plus-240)
    and PatchCore (WRN-50 layer2+3, memory bank fitted on 4 bottle training images under the
    same precision, or ``bank`` when given) get an APRIL-GAN normality detector on ``backbone``.
    """
    encoder = random_encoder(backbone, runtime)
    embedder = TextEmbedder(encoder, disk_cache=False)
    if detector == "aprilgan":
        return NormalityAddition(
            AprilGanDetector(encoder, "bottle", text_embedder=embedder), list(THREE_NORMALITIES)
        )
    normality_detector = NormalityDetector(encoder, "bottle", text_embedder=embedder)
    other: Detector
    if detector == "winclip":
        other = WinClipDetector(random_encoder("ViT-B-16-plus-240", runtime), "bottle")
    else:
        other = PatchCoreDetector("wide_resnet50_2", runtime=runtime)
        if bank is not None:
            other.memory_bank = bank.clone()
        else:
            paths = find_reference_images(BOTTLE_TRAIN)[:PATCHCORE_FIT_IMAGES]
            other.fit([load_reference_images(paths, other.input_size)])
    return NormalityAddition(other, list(THREE_NORMALITIES), normality_detector=normality_detector)


def bench_precision(detector: str, name: str, shared_bank: bool = False) -> list[dict[str, object]]:
    """fp32 vs bf16 autocast on the CPU: images/s and deviation of every map and score from fp32.

    One timed ``explain`` per precision (its outputs are the ones compared). Text embeddings are
    encoded under each precision: the on-disk text cache points at a fresh folder per precision.
    With ``shared_bank`` PatchCore's bf16 run reads the memory bank fitted in fp32, so the row
    shows what bf16 changes at inference alone.
    """
    outputs = {}
    rows: list[dict[str, object]] = []
    native = ",".join(cpu_bf16_flags()) or "none"
    fp32_detector: Detector | None = None
    for precision in ("fp32", "bf16"):
        runtime = Runtime(torch.device("cpu"), precision)
        with tempfile.TemporaryDirectory() as cache, _environ(NORMADD_CACHE_DIR=cache):
            bank = None
            if shared_bank and precision != "fp32":
                assert isinstance(fp32_detector, PatchCoreDetector)
                bank = fp32_detector.memory_bank
            addition = precision_addition(detector, name, runtime, bank)
            if precision == "fp32":
                fp32_detector = addition.detector
        _, images, _ = load_batch([BOTTLE_TEST / p for p in PRECISION_IMAGES], addition.input_size)
        assert images is not None
        bank_precision = "fp32" if shared_bank else precision
        start = time.perf_counter()
        outputs[precision] = addition.explain(images)
        seconds = time.perf_counter() - start
        row: dict[str, object] = {
            "detector": detector,
            "backbone": name,
            "precision": precision,
            "memory_bank": bank_precision if detector == "patchcore" else "-",
            "native_bf16": native,
            "images": images.shape[0],
            "images/s": f"{images.shape[0] / seconds:.3f}",
        }
        reference = outputs["fp32"]
        for field in ("before", "suppression", "after", "before_scores", "after_scores"):
            difference = (getattr(outputs[precision], field).float() - getattr(reference, field).float()).abs()
            row[f"max_diff_{field}"] = f"{difference.max().item():.1e}"
        row["before_range"] = f"{(reference.before.max() - reference.before.min()).item():.2f}"
        rows.append(row)
        print("  ".join(str(v) for v in row.values()), flush=True)
    return rows


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def bench_throughput(name: str, batches: list[int], repeats: int, device: str) -> list[dict[str, object]]:
    runtime = resolve_runtime(device, "auto")
    encoder = random_encoder(name, runtime)
    embedder = TextEmbedder(encoder, disk_cache=False)
    detector = AprilGanDetector(encoder, "bottle", text_embedder=embedder)
    rows: list[dict[str, object]] = []
    for batch in batches:
        images = torch.rand(batch, 3, encoder.image_size, encoder.image_size)
        configs: list[tuple[str, object]] = [("detector alone", lambda x=images: detector.detect(x))]
        for count in (1, 3):
            addition = NormalityAddition(detector, list(THREE_NORMALITIES[:count]))
            configs.append(
                (f"+{count} normalit{'y' if count == 1 else 'ies'}", lambda a=addition, x=images: a.explain(x))
            )
        base = None
        for label, call in configs:
            with peak_memory(runtime.device) as memory:
                seconds = timed(call, runtime.device, repeats)
            base = base or seconds
            rows.append(
                {
                    "backbone": name,
                    "size": encoder.image_size,
                    "batch": batch,
                    "config": label,
                    "seconds/batch": f"{seconds:.3f}",
                    "images/s": f"{batch / seconds:.2f}",
                    "overhead": f"{100 * (seconds / base - 1):+.1f}%",
                    "peak_MiB": f"{memory.mib:.0f}",
                    "precision": runtime.precision,
                }
            )
            print("  ".join(str(v) for v in rows[-1].values()), flush=True)
    return rows


def bench_text(name: str, device: str) -> list[dict[str, object]]:
    runtime = resolve_runtime(device, "auto")
    encoder = random_encoder(name, runtime)
    phrases = OfflinePhraseGenerator().phrases("bottle", "broken")[:3]
    sentences = expand_templates(phrases)
    tokens = encoder.tokenize(sentences)
    start = time.perf_counter()
    with torch.inference_mode():
        padded = encoder.model.encode_text(tokens.to(runtime.device)).float().cpu()
    full_seconds = time.perf_counter() - start
    start = time.perf_counter()
    trimmed = encoder.encode_texts(sentences)
    trimmed_seconds = time.perf_counter() - start
    embedder = TextEmbedder(encoder, disk_cache=False)
    embedder.embed_phrases(phrases)
    start = time.perf_counter()
    embedder.embed_phrases(phrases)
    cached_seconds = time.perf_counter() - start
    return [
        {
            "backbone": name,
            "prompts": len(sentences),
            "padded_to_77_s": f"{full_seconds:.3f}",
            "padded_to_longest_s": f"{trimmed_seconds:.3f}",
            "speed-up": f"{full_seconds / trimmed_seconds:.1f}x",
            "max_abs_diff": f"{(padded - trimmed).abs().max().item():.1e}",
            "cached_normality_s": f"{cached_seconds:.6f}",
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tiny-random,ViT-L-14-336")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per config (median)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision-only", action="store_true", help="Only the fp32 vs bf16 rows.")
    parser.add_argument(
        "--detectors",
        default="aprilgan",
        help=f"with --precision-only: detectors to compare, of {','.join(PRECISION_DETECTORS)}",
    )
    parser.add_argument(
        "--patchcore-shared-bank", action="store_true", help="PatchCore's bf16 run reads the fp32 memory bank"
    )
    parser.add_argument("--output", default="", help="with --precision-only: CSV name under results/")
    args = parser.parse_args()
    if args.precision_only:
        detectors = args.detectors.split(",")
        unknown = sorted(set(detectors) - set(PRECISION_DETECTORS))
        if unknown:
            parser.error(f"unknown detector(s) {', '.join(unknown)}: use {', '.join(PRECISION_DETECTORS)}")
        print(f"# {machine_line(torch.device('cpu'))}")
        path = RESULTS / (args.output or "bench_inspect_precision.csv")
        rows = []
        for detector in detectors:
            for name in args.backbones.split(","):
                rows += bench_precision(detector, name, args.patchcore_shared_bank)
                write_csv(rows, path)  # after each pair, so a long emulated-bf16 run keeps what it measured
        print("\n## fp32 vs bf16 autocast on the CPU (detector + 3 normalities, bottle test images)")
        print_table(rows)
        print(f"wrote {path}")
        return
    batches = [int(b) for b in args.batches.split(",")]
    runtime = resolve_runtime(args.device, "auto")
    print(f"# {machine_line(runtime.device)}")
    throughput: list[dict[str, object]] = []
    text: list[dict[str, object]] = []
    for name in args.backbones.split(","):
        repeats = args.repeats if name != "tiny-random" else max(args.repeats, 5)
        throughput += bench_throughput(name, batches, repeats, args.device)
        text += bench_text(name, args.device)
    print("\n## inspection throughput (APRIL-GAN detector; NAND shares its CLIP pass)")
    print_table(throughput)
    print("\n## text encoding (3 phrases x 35 templates)")
    print_table(text)
    write_csv(throughput, RESULTS / "bench_inspect_throughput.csv")
    write_csv(text, RESULTS / "bench_inspect_text.csv")
    print(f"\nwrote {RESULTS / 'bench_inspect_throughput.csv'} and {RESULTS / 'bench_inspect_text.csv'}")


if __name__ == "__main__":
    main()
