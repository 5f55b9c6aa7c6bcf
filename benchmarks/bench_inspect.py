"""Throughput and peak memory of inspection: the detector alone vs with 1 and 3 normalities.

Random weights at the real sizes (the same compute as trained weights). Also times the text
side: 105 prompts padded to 77 tokens vs to the longest prompt, and a cached normality.

    python benchmarks/bench_inspect.py                      # tiny-random and ViT-L-14-336, batch 1 and 8
    python benchmarks/bench_inspect.py --backbones tiny-random --repeats 5
    python -m benchmarks.bench_inspect --precision-only --backbones ViT-L-14-336   # fp32 vs bf16 rows only

The precision rows run APRIL-GAN with 3 normalities on bottle test images in fp32 and under bf16
autocast (whatever the CPU: the ``native_bf16`` column says whether it computes bf16 natively, which
is when ``--precision auto`` picks it) and give images/s and the largest deviation of the before,
suppression and after maps and scores from fp32. Written to ``results/bench_inspect_precision.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine_line, peak_memory, print_table, random_encoder, timed, write_csv
from normadd.detectors.aprilgan import AprilGanDetector
from normadd.images import load_batch
from normadd.normality.addition import NormalityAddition
from normadd.prompts.phrases import OfflinePhraseGenerator
from normadd.prompts.templates import expand_templates
from normadd.prompts.text_embedding import TextEmbedder
from normadd.runtime import Runtime, cpu_bf16_flags, resolve_runtime

THREE_NORMALITIES = ("broken", "contamination", "scratch")
BOTTLE_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test"
PRECISION_IMAGES = ("broken_large/000.png", "contamination/000.png")


def bench_precision(name: str, repeats: int) -> list[dict[str, object]]:
    """fp32 vs bf16 autocast on the CPU: images/s and deviation of every map and score from fp32."""
    outputs = {}
    rows: list[dict[str, object]] = []
    native = ",".join(cpu_bf16_flags()) or "none"
    for precision in ("fp32", "bf16"):
        runtime = Runtime(torch.device("cpu"), precision)
        encoder = random_encoder(name, runtime)
        detector = AprilGanDetector(encoder, "bottle", text_embedder=TextEmbedder(encoder, disk_cache=False))
        addition = NormalityAddition(detector, list(THREE_NORMALITIES))
        _, images, _ = load_batch([BOTTLE_TEST / p for p in PRECISION_IMAGES], encoder.image_size)
        assert images is not None
        seconds = timed(lambda a=addition, x=images: a.explain(x), runtime.device, repeats)
        outputs[precision] = addition.explain(images)
        row: dict[str, object] = {
            "backbone": name,
            "precision": precision,
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
    args = parser.parse_args()
    if args.precision_only:
        print(f"# {machine_line(torch.device('cpu'))}")
        rows = [row for name in args.backbones.split(",") for row in bench_precision(name, args.repeats)]
        print("\n## fp32 vs bf16 autocast on the CPU (APRIL-GAN + 3 normalities, bottle test images)")
        print_table(rows)
        write_csv(rows, RESULTS / "bench_inspect_precision.csv")
        print(f"wrote {RESULTS / 'bench_inspect_precision.csv'}")
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
