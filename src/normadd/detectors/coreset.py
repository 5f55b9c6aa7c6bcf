"""PatchCore's coreset: k-center greedy selection of memory-bank features, exact or fast.

Both methods start from a seeded random row and repeatedly take the row farthest from every row
taken so far (the k-center greedy of Sener and Savarese, anomalib 2.7's ``KCenterGreedy``), with
distances measured after a sparse random projection.

The greedy's cost is in updating every row's distance to the coreset after each pick: done plainly
that reads the whole (N, d) matrix per pick. Here the update is *pruned* by the triangle inequality:
a row p whose nearest center is a(p) can only come closer to a new center c when
``|c - a(p)| < 2 |p - a(p)|``; the distances from c to the earlier centers are a small
matrix-vector product, so the rows to update are found with a few passes over N numbers and only
those rows' features are read. On PatchCore features a pick reaches about 0.1 % of the rows once
the coreset has a few hundred rows. When a pick does reach most rows (early on, or on features
without structure), the plain full update runs instead. The picks are the plain greedy's (up to
float rounding in exact ties); the loop runs on one thread, since its steps are too small for a
second one to pay its wake-up on a shared CPU.

- ``exact`` (the default): projection to the Johnson-Lindenstrauss size (eps 0.9), as anomalib.
- ``fast``: the same greedy on a projection to at most :data:`FAST_COMPONENTS` dimensions: the
  features read per update shrink. Its coverage radius is measured against the exact one's by
  ``benchmarks/bench_patchcore_fit.py`` and bounded by the tests. On PatchCore features it measured
  no faster than ``exact`` (the pruned loop's cost is its passes over N numbers, not the width),
  which is why ``exact`` is the default.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normadd.progress import NoProgress, ProgressHook

CORESET_METHODS = ("exact", "fast")
FAST_COMPONENTS = 128
FULL_UPDATE_FRACTION = 0.25  # above this share of reached rows, update every row


def johnson_lindenstrauss_dim(n_samples: int, eps: float = 0.9) -> int:
    """Smallest projection size that keeps distances within ``1 ± eps`` (Dasgupta and Gupta)."""
    return int(4 * math.log(n_samples) / (eps**2 / 2 - eps**3 / 3))


def sparse_random_projection(n_features: int, n_components: int, generator: torch.Generator) -> Tensor:
    """A very sparse random projection matrix (Li et al. 2006), density 1/sqrt(n_features): (n_features, n_components).

    Entries are 0 or ``±sqrt(1 / density) / sqrt(n_components)``.
    """
    density = 1.0 / math.sqrt(n_features)
    keep = torch.rand(n_features, n_components, generator=generator) < density
    signs = torch.randint(0, 2, (n_features, n_components), generator=generator).float() * 2 - 1
    return keep * signs * (math.sqrt(1.0 / density) / math.sqrt(n_components))


def check_coreset_method(method: str) -> str:
    """Return ``method`` when it is a known coreset method.

    Raises:
        ValueError: Any other word (the message lists the known ones).
    """
    if method not in CORESET_METHODS:
        raise ValueError(f"coreset method '{method}' is unknown: use {' or '.join(CORESET_METHODS)}")
    return method


def greedy_coreset(
    embeddings: Tensor,
    ratio: float = 0.1,
    seed: int = 0,
    eps: float = 0.9,
    method: str = "exact",
    progress: ProgressHook | None = None,
) -> Tensor:
    """Indices of a k-center greedy coreset of ``embeddings`` (N, D): ``int(N * ratio)`` rows.

    Distances are measured after a sparse random projection to the Johnson-Lindenstrauss size
    (``exact``; skipped when that is not smaller than D) or to at most :data:`FAST_COMPONENTS`
    (``fast``). Deterministic for a given seed. ``progress`` sees the picks (stage "PatchCore fit: coreset").

    Raises:
        ValueError: ``ratio`` outside (0, 1], a coreset of size 0 or an unknown method.
    """
    check_coreset_method(method)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    n, dims = embeddings.shape
    size = int(n * ratio)
    if size < 1:
        raise ValueError(f"a coreset ratio of {ratio} of {n} features keeps none: raise the ratio or add images")
    generator = torch.Generator().manual_seed(seed)
    features = embeddings.float()
    components = johnson_lindenstrauss_dim(n, eps)
    if method == "fast":
        components = min(components, FAST_COMPONENTS)
    if components < dims:
        projection = sparse_random_projection(dims, components, generator).to(features.device)
        features = features @ projection
    start = int(torch.randint(n, (1,), generator=generator))
    return k_center_greedy(features, size, start, progress)


def k_center_greedy(features: Tensor, size: int, start: int, progress: ProgressHook | None = None) -> Tensor:
    """The k-center greedy's ``size`` picks among the rows of ``features`` (N, d), from row ``start``.

    ``progress`` is told about the picks, about a hundred times in all.

    Returns:
        (size,) row indices in the order picked (``size`` capped at N).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pruned_greedy(features.contiguous(), min(size, features.shape[0]), start, progress or NoProgress())
    finally:
        torch.set_num_threads(threads)


def _pruned_greedy(features: Tensor, size: int, start: int, progress: ProgressHook) -> Tensor:
    n = features.shape[0]
    progress.start("PatchCore fit: coreset", size)
    report_every = max(1, size // 100)
    device = features.device
    squared_norms = (features * features).sum(dim=1)
    min_distances = torch.full((n,), float("inf"), device=device)  # squared, to the nearest center
    nearest = torch.zeros(n, dtype=torch.long, device=device)  # index (in picking order) of that center
    centers = torch.empty(size, features.shape[1], device=device)
    center_norms = torch.empty(size, device=device)
    selected = torch.empty(size, dtype=torch.long)
    full_update = int(FULL_UPDATE_FRACTION * n)
    index = start
    for step in range(size):
        selected[step] = index
        center = features[index]
        centers[step] = center
        center_norms[step] = squared_norms[index]
        rows = None
        if step > 0:
            to_centers = (center_norms[:step] - 2 * (centers[:step] @ center) + center_norms[step]).clamp_min_(0)
            # Squared triangle inequality, with a margin for the float rounding of the expanded square.
            reach = to_centers.index_select(0, nearest) < 4.004 * min_distances + 1e-6
            rows = reach.nonzero().squeeze(1)
            if rows.numel() > full_update:
                rows = None
        if rows is None:
            distances = (squared_norms - 2 * (features @ center) + center_norms[step]).clamp_min_(0)
            closer = distances < min_distances
            min_distances = torch.where(closer, distances, min_distances)
            nearest[closer] = step
        else:
            distances = squared_norms.index_select(0, rows) - 2 * (features.index_select(0, rows) @ center)
            distances = (distances + center_norms[step]).clamp_min_(0)
            closer = distances < min_distances.index_select(0, rows)
            moved = rows[closer]
            min_distances.index_copy_(0, moved, distances[closer])
            nearest.index_fill_(0, moved, step)
        min_distances[index] = 0.0
        nearest[index] = step
        index = int(torch.argmax(min_distances))
        if (step + 1) % report_every == 0:
            progress.advance(report_every)
        elif step + 1 == size:
            progress.advance(size % report_every)
    return selected
