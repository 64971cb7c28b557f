"""Keypoint transfer by nearest-neighbour matching of dense descriptors, scored by PCK (the LiFT/WRC protocol).

Descriptors: the extractor's features on the upsampled grid (``factor`` x the token grid), L2-normalised
per location, then bilinearly resized to the image (align_corners False; ``lanczos``, what the LiFT paper
says it did, is the option). A source keypoint takes the
descriptor of pixel (row floor(y), col int(x)); its prediction is the target pixel of highest similarity
(dot product of those descriptors: the cosine on the grid) over the whole target image (source -> target
only, no mutual check, no soft-argmax). Neither image's descriptors are materialised at the pixel grid:
the source is sampled at its keypoints, and the similarity maps are resized instead of the target's
features (``match_points``), which gives the same numbers.
PCK@alpha: a prediction is correct iff its distance to the true target keypoint is < alpha * max side of
the target box (in the padded frame); counts are pooled over a category's keypoints.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F

from wrc.extractor import DenseFeatureExtractor

RESIZES = ("bilinear", "lanczos")  # descriptor grid -> image: LiFT's and WRC's code | the LiFT paper's text
LANCZOS_A = 3


@torch.no_grad()
def descriptor_grid(extractor: DenseFeatureExtractor, images: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, C, factor * h, factor * w): upsampled features, unit length at every location."""
    tokens = extractor.tokens(images)
    size = (tokens.shape[-2] * factor, tokens.shape[-1] * factor)
    return F.normalize(extractor.upsample(tokens, images, size).float(), dim=1)


def resize_weights(n_in: int, n_out: int, kind: str = "bilinear") -> torch.Tensor:
    """(n_out, n_in) float64: the weight of each input sample in each output pixel, pixel centres aligned
    (align_corners False). bilinear: F.interpolate's (borders clamped); lanczos: PIL's LANCZOS (a = 3, support
    widened when shrinking, truncated at the borders and renormalised)."""
    if kind not in RESIZES:
        raise ValueError(f"feature resize {kind!r}; expected one of {RESIZES}")
    scale = n_in / n_out
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale  # in input pixels, from the left edge
    if kind == "bilinear":
        source = (centre - 0.5).clamp_min(0)
        low = source.floor().long().clamp(max=n_in - 1)
        high, frac = (low + 1).clamp(max=n_in - 1), source - low
        weights = torch.zeros(n_out, n_in, dtype=torch.float64)
        weights[torch.arange(n_out), low] += 1 - frac
        weights[torch.arange(n_out), high] += frac
        return weights
    stretch = max(scale, 1.0)
    support = LANCZOS_A * stretch
    j = torch.arange(n_in, dtype=torch.float64)
    x = (j[None] + 0.5 - centre[:, None]) / stretch
    weights = torch.sinc(x) * torch.sinc(x / LANCZOS_A) * (x.abs() < LANCZOS_A)
    first = (centre - support + 0.5).floor().clamp_min(0)
    last = (centre + support + 0.5).floor().clamp(max=n_in)
    weights = weights * ((j[None] >= first[:, None]) & (j[None] < last[:, None]))
    return weights / weights.sum(dim=1, keepdim=True)


def to_pixels(grid: torch.Tensor, size: int, kind: str = "bilinear") -> torch.Tensor:
    """(B, C, h, w) descriptors -> (B, C, size, size), resized with align_corners False (``kind``: RESIZES)."""
    if kind == "bilinear":
        return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    rows, cols = (resize_weights(n, size, kind).to(grid) for n in grid.shape[-2:])
    return torch.einsum("yi,bcij,xj->bcyx", rows, grid, cols)


def pixel_descriptors(grid: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: int,
                      kind: str = "bilinear") -> torch.Tensor:
    """(N, C): what ``to_pixels(grid[None], size, kind)[0][:, rows, cols]`` holds, computed at those pixels only."""
    row_weights = resize_weights(grid.shape[-2], size, kind).to(grid)[rows.to(grid.device)]
    col_weights = resize_weights(grid.shape[-1], size, kind).to(grid)[cols.to(grid.device)]
    return torch.einsum("ni,cij,nj->nc", row_weights, grid, col_weights)


def match_points(source_grid: torch.Tensor, target_grid: torch.Tensor, points: torch.Tensor, size: int,
                 kind: str = "bilinear") -> torch.Tensor:
    """Source keypoints (N, 2) [x, y] in the padded frame -> predicted target pixels (N, 2) [x, y] (int64).

    ``source_grid`` and ``target_grid`` are (C, h, w) descriptor grids of one pair, resized to the image by
    ``kind``. The similarity of a query to every target pixel, <q, resize(target)>, is computed as
    resize(<q, target>) on the grid: the same numbers (resizing is linear), at N instead of C maps of size x size.

    Clamping: a keypoint reads the pixel (row floor(y), col int(x)) *clamped to the image*, rows and columns to
    [0, size - 1]. Only a point on or past the image's edge gets there (an annotation at x = W, the far edge,
    scales to x = size; a negative one to row -1): it reads the nearest border pixel instead of failing or, with
    a flat index y * size + x, wrapping into the next row. The reference reads the pixel unchecked, so it does not
    say what such points do; points inside the image are unaffected.
    """
    rows = points[:, 1].floor().long().clamp(0, size - 1)
    cols = points[:, 0].long().clamp(0, size - 1)  # int(x): truncation, as LiFT indexes; then clamped (above)
    queries = pixel_descriptors(source_grid, rows, cols, size, kind)  # N, C
    similarity = torch.einsum("nc,chw->nhw", queries, target_grid)
    best = to_pixels(similarity[None], size, kind)[0].flatten(1).argmax(dim=1).cpu()
    return torch.stack([best % size, best // size], dim=1)


def correct_counts(predicted: torch.Tensor, truth: torch.Tensor, box_side: float,
                   alphas: Sequence[float]) -> list[int]:
    """How many predictions lie strictly within alpha * ``box_side`` of the truth, per alpha."""
    error = (predicted.double() - truth.double()).norm(dim=1)
    return [int((error < alpha * box_side).sum()) for alpha in alphas]


class DescriptorCache:
    """Descriptor grids by key (an image path), computed once in batches by ``compute``; the least recently used are
    dropped beyond ``max_bytes`` (pairs of a category share images, categories share none)."""

    def __init__(self, compute: Callable[[list[Hashable]], torch.Tensor], max_bytes: int, batch_size: int) -> None:
        self.compute, self.max_bytes, self.batch_size = compute, max_bytes, batch_size
        self.grids: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.computed = 0  # images through the extractor (each once while it stays cached)

    def get(self, keys: Sequence[Hashable]) -> list[torch.Tensor]:
        """The grids of ``keys``, computing the missing ones ``batch_size`` at a time."""
        wanted = list(dict.fromkeys(keys))
        missing = [k for k in wanted if k not in self.grids]
        fresh = {}
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            fresh.update(zip(chunk, [g.clone() for g in self.compute(chunk)], strict=True))  # own storage each
            self.computed += len(chunk)
        found = {k: fresh[k] if k in fresh else self.grids[k] for k in wanted}
        for key, grid in found.items():
            self.grids[key] = grid
            self.grids.move_to_end(key)
        self._evict(keep=set(wanted))
        return [found[k] for k in keys]

    def _evict(self, keep: set) -> None:
        used = sum(g.numel() * g.element_size() for g in self.grids.values())
        for key in list(self.grids):
            if used <= self.max_bytes:
                break
            if key not in keep:
                used -= self.grids[key].numel() * self.grids[key].element_size()
                del self.grids[key]
