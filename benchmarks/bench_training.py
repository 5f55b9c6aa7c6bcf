"""Training throughput of the APRIL-GAN projections (images/s), CLIP frozen, random weights at the real sizes.

Each step: load and resize the images and masks, one frozen CLIP pass, the per-layer projections,
the per-layer maps at the run size (518 px for ViT-L-14-336), focal + dice, backward, Adam. The
first steps of a run also decode the PNGs (later epochs read them from memory), so the numbers
are for a first epoch. The CLIP pass is timed on its own too, to show where the time goes.

    python benchmarks/bench_training.py                                  # tiny-random and ViT-L-14-336
    python benchmarks/bench_training.py --backbones tiny-random --steps 20 --batch 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine_line, peak_memory, print_table, random_encoder, timed, write_csv
from normadd.prompts.text_embedding import TextEmbedder
from normadd.runtime import resolve_runtime
from normadd.training import MaskedImageDataset, ProjectionTrainer, StepReport, TrainingSettings
from normadd.training.dataset import class_samples

BOTTLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_ad" / "bottle"


def bench_backbone(name: str, batch: int, steps: int, data: Path, device: str) -> dict[str, object]:
    runtime = resolve_runtime(device, "auto")
    encoder = random_encoder(name, runtime)
    samples = class_samples(data)
    defects = [s for s in samples if s.mask is not None]
    goods = [s for s in samples if s.mask is None]
    pool = defects + goods  # defects first: a benchmark of a few steps trains on masked images
    chosen = [pool[i % len(pool)] for i in range(batch * steps)]
    dataset = MaskedImageDataset(chosen, encoder.image_size, check_masks=False, cache=False)
    trainer = ProjectionTrainer(
        encoder,
        TrainingSettings(epochs=1, batch_size=batch, mosaic_rate=0.0),
        text_embedder=TextEmbedder(encoder, disk_cache=False),
    )
    for class_name in dataset.class_names:  # encode the class prompts before the clock starts
        trainer.text_embedder.normal(class_name)
        trainer.text_embedder.abnormal(class_name)
    step_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(report: StepReport) -> None:
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    with peak_memory(runtime.device) as memory:
        last[0] = time.perf_counter()
        start = last[0]
        result = trainer.fit(dataset, on_step=on_step)
        total = time.perf_counter() - start
    pixels = torch.rand(batch, 3, encoder.image_size, encoder.image_size)
    clip_seconds = timed(lambda: encoder.encode_images(encoder.preprocess(pixels)), runtime.device, 1)
    step_seconds = total / len(step_times)
    return {
        "backbone": name,
        "size": encoder.image_size,
        "batch": batch,
        "steps": len(step_times),
        "images": len(dataset),
        "seconds/step": f"{step_seconds:.3f}",
        "images/s": f"{len(dataset) / total:.3f}",
        "clip_forward_s/batch": f"{clip_seconds:.3f}",
        "clip_share": f"{100 * clip_seconds / step_seconds:.0f}%",
        "first_loss": f"{result.step_losses[0]:.3f}",
        "peak_MiB": f"{memory.mib:.0f}",
        "device": runtime.device.type,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tiny-random,ViT-L-14-336")
    parser.add_argument("--batch", type=int, default=0, help="images per step (default: 8 tiny-random, 2 ViT-L)")
    parser.add_argument("--steps", type=int, default=0, help="steps (default: 10 tiny-random, 2 ViT-L)")
    parser.add_argument("--data", type=Path, default=BOTTLE, help="one class folder in the MVTec AD layout")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    runtime = resolve_runtime(args.device, "auto")
    print(f"# {machine_line(runtime.device)}")
    rows = []
    for name in args.backbones.split(","):
        small = name == "tiny-random"
        batch = args.batch or (8 if small else 2)
        steps = args.steps or (10 if small else 2)
        rows.append(bench_backbone(name, batch, steps, args.data, args.device))
        print("  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    print("\n## training throughput (projections only; CLIP frozen; first epoch, PNG decoding included)")
    print_table(rows)
    write_csv(rows, RESULTS / "bench_training.csv")
    print(f"\nwrote {RESULTS / 'bench_training.csv'}")


if __name__ == "__main__":
    main()
