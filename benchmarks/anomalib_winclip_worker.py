"""One anomalib 2.7 WinCLIP row for ``bench_detectors.py``, run in anomalib's own environment.

anomalib's WinCLIP needs open-clip-torch 2.24 (``../shared/notes/anomalib_reference.md``), so this
script imports neither normadd nor the benchmark helpers and runs under that environment's Python::

    /tmp/anomalib-venv/bin/python benchmarks/anomalib_winclip_worker.py --images 2 --shots 0

It builds ``WinClipModel`` on ViT-B-16-plus-240 with random weights (``PRETRAINED = None``), times
setup (model build and prompt encoding, plus the reference images for ``--shots`` > 0) and one
forward over ``--images`` images drawn like the normadd worker's (``torch.manual_seed(0)``,
``torch.rand``; same torch, same images), and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from anomalib.models.image.winclip import torch_model as winclip_module

OPENAI_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--shots", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(args.images, 3, 240, 240)
    references = torch.rand(args.shots, 3, 240, 240) if args.shots else None
    winclip_module.PRETRAINED = None
    start = time.perf_counter()
    model = winclip_module.WinClipModel(class_name="bottle").eval()
    if references is not None:
        model.setup(reference_images=(references - OPENAI_MEAN) / OPENAI_STD)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        model((images - OPENAI_MEAN) / OPENAI_STD)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "detector": f"anomalib 2.7 WinCLIP {args.shots}shot (ViT-B-16-plus-240)",
                "input": "240px",
                "images": args.images,
                "images_per_s": round(args.images / seconds, 3),
                "s_per_image": round(seconds / args.images, 2),
                "setup_s": round(setup, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "images_checksum": round(float(images.sum()), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
