"""Label propagation (DINO's semi-supervised video object segmentation, as LiFT and WRC run it).

For a target frame, every context frame (the first frame, with its one-hot labels, and up to ``context_frames``
previous frames, with their propagated soft labels) offers the sources within ``radius`` cells (Chebyshev
distance) of each target cell on the feature grid. With cosine similarities c of L2-normalised features, each
target keeps the sources whose c is at least its ``topk``-th largest over all context frames jointly (ties are all
kept), weights them by exp(c / temperature) normalised to sum 1, and takes the weighted mean of their labels.

Two formulations give the same soft labels:
- ``propagate_local`` computes, per context frame, only what the windows need: the grid is cut into tiles of
  ``tile`` x ``tile`` targets, each multiplied by the (tile + 2r)^2 source cells around it (a GEMM per row of that
  region, on strided views of the grid: nothing is copied), from which every target gathers its (2r + 1)^2 window
  (an axis no longer than tile + 2r is one tile: every target sees the whole axis, masked to the radius). Memory
  and time grow with hw (2r + 1)^2, never with (frames x hw) x hw; one row of tiles is held at a time.
- ``propagate_dense`` builds the (hw) x (frames x hw) affinity masked to the window: the reference formulation.
Both compute in float64, so the choice of the top k does not hang on the summation order of a particular GEMM
(a float32 near-tie could otherwise keep a different source in the two); weights are shifted by each target's
best cosine before the exponential, which cancels in the normalisation and cannot overflow.

Frames: ``preprocess="square"`` (LiFT / WRC, the default) resizes to image_size x image_size with PIL bicubic;
``"dino"`` resizes the short side to ``short_side`` and the long side to floor(long * short_side / short / 64) * 64
(854 x 480 -> 832 x 480) with PIL bilinear (DINO uses OpenCV's bilinear; for that slight shrink they differ only in
PIL's antialiasing support). Either size is then rounded to the nearest multiple of the patch size (at least one
patch) where it is not one already (e.g. 480 -> 476 for patch 14). The feature grid is the token grid times
``upsample_factor`` (the upsampler is asked for that size; 1 runs the backbone's own grid through the same path).

Output per frame, as DINO, LiFT and WRC decode it: soft labels bilinearly upsampled by the patch size (to grid x
patch exactly, which is DINO's ``scale_factor=patch``; on a 2x grid that is twice the processed image, 448 x 448
at 224, not the processed image itself), each channel min-max normalised (a channel that is constant and positive
becomes 1; DINO divides 0 by 0 there), argmax, PIL nearest resize to the original frame size, an indexed PNG; the
first frame's annotation is copied as its own result.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from evaluation.video.davis import VOID, read_label, write_label
from wrc.data.io import array_to_tensor, decode_rgb
from wrc.extractor import DenseFeatureExtractor

PREPROCESSINGS = ("square", "dino")
UPSAMPLE_FACTORS = (1, 2, 4)
TILE = 8  # targets per tile side in propagate_local: (1 + TILE / (2r + 1))^2 = 1.64x the window's products at r = 12
DTYPE = torch.float64


@dataclass(frozen=True)
class PropagationConfig:
    """The DINO hyper-parameters (shared by DINO, LiFT and WRC)."""

    context_frames: int = 7  # previous frames in the queue, besides the first frame
    topk: int = 5
    radius: int = 12  # cells on the feature grid, Chebyshev distance
    temperature: float = 0.1


@dataclass(frozen=True)
class FramePreprocessing:
    """How frames become backbone inputs and which feature grid the labels live on."""

    preprocess: str = "square"
    image_size: int = 224  # square side ("square")
    short_side: int = 480  # short side ("dino")
    upsample_factor: int = 2  # feature grid = token grid x this

    def size(self, height: int, width: int, patch_size: int) -> tuple[int, int]:
        """The processed (H, W) of a (height, width) frame, multiples of ``patch_size``."""
        if self.preprocess == "square":
            size = (self.image_size, self.image_size)
        elif self.preprocess == "dino":
            short, long = sorted((height, width))
            long_side = math.floor(long * self.short_side / short / 64) * 64
            size = (self.short_side, long_side) if height <= width else (long_side, self.short_side)
        else:
            raise ValueError(f"preprocess={self.preprocess!r}; expected one of {PREPROCESSINGS}")
        return tuple(max(patch_size, math.floor(side / patch_size + 0.5) * patch_size) for side in size)

    def load(self, path: str | os.PathLike, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The frame at ``path`` as (3, H, W) in [0, 1] at the processed size, and its original (height, width)."""
        pixels = decode_rgb(path)
        original = pixels.shape[:2]
        height, width = self.size(*original, patch_size)
        if pixels.dtype == np.uint8:  # PIL's resampling, as LiFT's torchvision Resize on PIL images
            method = Image.BICUBIC if self.preprocess == "square" else Image.BILINEAR
            return array_to_tensor(np.asarray(Image.fromarray(pixels).resize((width, height), method))), original
        image = array_to_tensor(pixels)[None]  # 16-bit or float sources: the same filters in torch
        mode = "bicubic" if self.preprocess == "square" else "bilinear"
        resized = F.interpolate(image, size=(height, width), mode=mode, align_corners=False, antialias=True)
        return resized[0].clamp(0, 1), original


def one_hot_labels(label: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """The first frame's ids nearest-resized to the feature grid, one-hot with max id + 1 channels (C, h, w).

    The channel count comes from the full-resolution map, so an object too small for the grid keeps its (empty)
    channel; void (255) counts as background."""
    label = np.where(label == VOID, 0, label).astype(np.uint8)
    small = np.asarray(Image.fromarray(label).resize((grid[1], grid[0]), Image.NEAREST))
    ids = torch.from_numpy(small.astype(np.int64))
    return F.one_hot(ids, int(label.max()) + 1).permute(2, 0, 1).to(DTYPE)


def _check(target: torch.Tensor, sources: torch.Tensor, labels: torch.Tensor, radius: int, topk: int,
           temperature: float) -> None:
    if target.ndim != 3 or sources.ndim != 4 or labels.ndim != 4:
        raise ValueError(f"expected target (d, h, w), sources (n, d, h, w), labels (n, C, h, w); got shapes "
                         f"{tuple(target.shape)}, {tuple(sources.shape)}, {tuple(labels.shape)}")
    if sources.shape[1:] != target.shape or labels.shape[0] != sources.shape[0] or \
            labels.shape[2:] != target.shape[1:]:
        raise ValueError(f"sources {tuple(sources.shape)} and labels {tuple(labels.shape)} must be (n, d, h, w) and "
                         f"(n, C, h, w) for the target {tuple(target.shape)}")
    if radius < 0 or topk < 1 or not temperature > 0:
        raise ValueError(f"need radius >= 0, topk >= 1 and temperature > 0; got {radius}, {topk}, {temperature}")


def _weights(cosines: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """exp((c - best) / temperature) over the entries >= the k-th largest of the last axis, normalised to sum 1
    (entries outside the window are -inf, so they never count, and a window shorter than k keeps all of it).
    Computed in place: ``cosines`` becomes the weights."""
    top = cosines.topk(k, dim=-1).values
    best = torch.where(torch.isfinite(top[..., :1]), top[..., :1], 0.0)
    drop = cosines < top[..., -1:]
    weights = cosines.sub_(best).div_(temperature).exp_().masked_fill_(drop, 0.0)
    return weights.div_(weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny))


def propagate_dense(target: torch.Tensor, sources: torch.Tensor, labels: torch.Tensor, radius: int = 12,
                    topk: int = 5, temperature: float = 0.1) -> torch.Tensor:
    """The reference: the whole (hw) x (n hw) affinity, masked to the window, top-k per target over all frames.

    target (d, h, w) features, sources (n, d, h, w), labels (n, C, h, w) -> soft labels (C, h, w), float64."""
    _check(target, sources, labels, radius, topk, temperature)
    n, d, h, w = sources.shape
    hw = h * w
    queries = F.normalize(target.to(DTYPE).reshape(d, hw), dim=0).T  # (hw, d)
    keys = F.normalize(sources.to(DTYPE), dim=1).permute(1, 0, 2, 3).reshape(d, n * hw)  # frame-major columns
    cosines = queries @ keys  # (hw, n hw)
    ys, xs = torch.arange(h, device=target.device), torch.arange(w, device=target.device)
    near_y, near_x = (ys[:, None] - ys[None]).abs() <= radius, (xs[:, None] - xs[None]).abs() <= radius
    near = (near_y[:, None, :, None] & near_x[None, :, None, :]).reshape(hw, hw)  # target y w + x, source y' w + x'
    cosines.view(hw, n, hw).masked_fill_(~near[:, None, :], float("-inf"))
    weights = _weights(cosines, min(topk, n * hw), temperature)
    values = labels.to(DTYPE).permute(0, 2, 3, 1).reshape(n * hw, -1)  # (n hw, C)
    return (weights @ values).T.reshape(-1, h, w)


@dataclass(frozen=True)
class _Axis:
    """How propagate_local cuts one grid axis: ``tiles`` tiles of ``tile`` targets, each reading ``region``
    consecutive cells of the source axis padded by ``pad`` = (before, after); ``index`` (tile, k) is the region
    position of each target's k window cells, ``valid`` (tiles, tile, k) whether that cell is a real one in range."""

    tiles: int
    tile: int
    region: int
    pad: tuple[int, int]
    index: torch.Tensor
    valid: torch.Tensor


def _axis(size: int, radius: int, tile: int, device: torch.device) -> _Axis:
    cells = torch.arange(size, device=device)
    if size <= tile + 2 * radius:  # one tile: every target reads the whole axis, masked to the radius
        index = cells.expand(size, size)
        valid = ((cells[:, None] - cells[None]).abs() <= radius)[None]
        return _Axis(1, size, size, (0, 0), index, valid)
    tiles = -(-size // tile)
    offsets = torch.arange(2 * radius + 1, device=device)
    index = torch.arange(tile, device=device)[:, None] + offsets[None]  # target i, offset a -> region cell i + a
    source = torch.arange(tiles, device=device)[:, None, None] * tile + index[None] - radius  # unpadded coordinate
    valid = (source >= 0) & (source < size)
    return _Axis(tiles, tile, tile + 2 * radius, (radius, tiles * tile - size + radius), index, valid)


def propagate_local(target: torch.Tensor, sources: torch.Tensor, labels: torch.Tensor, radius: int = 12,
                    topk: int = 5, temperature: float = 0.1, tile: int = TILE) -> torch.Tensor:
    """The same soft labels as ``propagate_dense``, computing only the windows (module docstring), one row of tiles
    at a time: target (d, h, w), sources (n, d, h, w), labels (n, C, h, w) -> (C, h, w), float64."""
    _check(target, sources, labels, radius, topk, temperature)
    if tile < 1:
        raise ValueError(f"tile must be >= 1; got {tile}")
    n, d, h, w = sources.shape
    channels, device = labels.shape[1], target.device
    rows, cols = _axis(h, radius, tile, device), _axis(w, radius, tile, device)
    (top, bottom), (left, right) = rows.pad, cols.pad
    # channels last: a row of a tile's region is then a plain strided matrix of the grid, multiplied in place
    padded = torch.zeros(n, top + h + bottom, left + w + right, d, dtype=DTYPE, device=device)
    for frame in range(n):  # normalised one frame at a time: no second full-size copy of the sources
        padded[frame, top : top + h, left : left + w] = F.normalize(sources[frame].to(DTYPE), dim=0).permute(1, 2, 0)
    values = F.pad(labels.to(DTYPE), (left, right, top, bottom)).permute(0, 2, 3, 1).contiguous()
    queries = F.pad(F.normalize(target.to(DTYPE), dim=0),
                    (0, cols.tiles * cols.tile - w, 0, rows.tiles * rows.tile - h)).permute(1, 2, 0).contiguous()
    k_rows, k_cols = rows.index.shape[1], cols.index.shape[1]
    window = (rows.index[:, None, :, None] * cols.region + cols.index[None, :, None, :]).reshape(
        rows.tile * cols.tile, k_rows * k_cols)  # target (i, j) -> region cells of its window
    targets, cells = window.shape
    whole = rows.tiles == cols.tiles == 1  # one tile holds the grid: the windows are the regions themselves
    window = window.expand(cols.tiles, targets, cells)

    def regions(grid: torch.Tensor, band: slice) -> torch.Tensor:
        """(rows, cols, k) -> (tiles, region cells, k): the cells each tile of the band reads (a copy)."""
        return grid[band].unfold(1, cols.region, cols.tile).permute(1, 0, 3, 2).reshape(
            cols.tiles, rows.region * cols.region, -1)

    out = torch.empty(rows.tiles * rows.tile, cols.tiles * cols.tile, channels, dtype=DTYPE, device=device)
    for ty in range(rows.tiles):
        band = slice(ty * rows.tile, ty * rows.tile + rows.region)
        tile_queries = queries[ty * rows.tile : (ty + 1) * rows.tile].reshape(
            rows.tile, cols.tiles, cols.tile, d).transpose(0, 1).reshape(cols.tiles, targets, d)
        valid = (rows.valid[ty][None, :, None, :, None] & cols.valid[:, None, :, None, :]).reshape(
            cols.tiles, targets, 1, cells)
        cosines = torch.empty(cols.tiles, targets, n, cells, dtype=DTYPE, device=device)
        products = torch.empty(rows.region, cols.tiles, targets, cols.region, dtype=DTYPE, device=device) \
            if cols.tiles > 1 else None
        for frame in range(n):
            if cols.tiles == 1:  # the region spans whole grid rows: one matrix, viewed in place
                flat = tile_queries @ padded[frame, band].reshape(1, rows.region * cols.region, d).transpose(1, 2)
            else:
                for row in range(rows.region):  # each region row is a strided view of one grid row: no copy
                    cells_of_row = padded[frame, band.start + row].unfold(0, cols.region, cols.tile)  # tiles, d, cols
                    torch.bmm(tile_queries, cells_of_row, out=products[row])
                flat = products.permute(1, 2, 0, 3).reshape(cols.tiles, targets, rows.region * cols.region)
            cosines[:, :, frame] = flat if whole else flat.gather(2, window)
        cosines.masked_fill_(~valid, float("-inf"))
        weights = _weights(cosines.view(cols.tiles, targets, n * cells), min(topk, n * cells), temperature)
        weights = weights.view(cols.tiles, targets, n, cells)
        soft = torch.zeros(cols.tiles, targets, channels, dtype=DTYPE, device=device)
        for frame in range(n):
            spread = weights[:, :, frame]
            if not whole:
                spread = torch.zeros(cols.tiles, targets, rows.region * cols.region, dtype=DTYPE,
                                     device=device).scatter_(2, window, spread)
            soft += torch.bmm(spread, regions(values[frame], band))
        out[ty * rows.tile : (ty + 1) * rows.tile] = soft.view(cols.tiles, rows.tile, cols.tile, channels).transpose(
            0, 1).reshape(rows.tile, cols.tiles * cols.tile, channels)
    return out[:h, :w].permute(2, 0, 1).contiguous()


Propagate = Callable[..., torch.Tensor]


class LabelPropagator:
    """The first frame plus a FIFO queue of the last ``context_frames`` frames (features, soft labels): each
    ``step`` propagates to a new frame and queues it."""

    def __init__(self, first_features: torch.Tensor, first_labels: torch.Tensor, config: PropagationConfig,
                 propagate: Propagate = propagate_local) -> None:
        self.first = (first_features, first_labels.to(DTYPE))
        self.queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=config.context_frames or None)
        self.config, self.propagate = config, propagate

    def step(self, features: torch.Tensor) -> torch.Tensor:
        """Soft labels (C, h, w) of the frame with ``features`` (d, h, w), which then joins the queue."""
        context = [self.first, *self.queue]
        c = self.config
        soft = self.propagate(features, torch.stack([f for f, _ in context]), torch.stack([y for _, y in context]),
                              radius=c.radius, topk=c.topk, temperature=c.temperature)
        if c.context_frames > 0:
            self.queue.append((features, soft))
        return soft


def labels_from_soft(soft: torch.Tensor, patch_size: int, original: tuple[int, int]) -> np.ndarray:
    """Soft labels (C, h, w) -> ids (H0, W0) uint8, DINO's decoding: bilinear upsampling by ``patch_size`` to
    (h patch_size, w patch_size) whatever the grid's factor over the tokens (align_corners False), per-channel
    min-max, argmax, PIL nearest resize to the original frame."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1; got {patch_size}")
    h, w = soft.shape[-2:]
    up = F.interpolate(soft[None], size=(h * patch_size, w * patch_size), mode="bilinear", align_corners=False)[0]
    for channel in up:  # DINO's norm_mask, in place: one full-size map, however many channels
        high = channel.max()
        if high > 0:
            low = channel.min()
            if high > low:
                channel.sub_(low).div_(high - low)
            else:
                channel.fill_(1.0)
    ids = up.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.asarray(Image.fromarray(ids).resize((original[1], original[0]), Image.NEAREST))


@dataclass(frozen=True)
class SequenceInfo:
    """What propagating one sequence used: frames written, the processed frame size and the feature grid."""

    frames: int
    processed_size: tuple[int, int]
    grid: tuple[int, int]


@torch.no_grad()
def frame_features(extractor: DenseFeatureExtractor, image: torch.Tensor, factor: int) -> torch.Tensor:
    """(d, factor h, factor w) features of one (3, H, W) frame: the upsampler asked for factor x the token grid."""
    batch = image[None].to(extractor.device)
    tokens = extractor.tokens(batch)
    size = (tokens.shape[-2] * factor, tokens.shape[-1] * factor)
    return extractor.upsample(tokens, batch, size)[0].float()


def propagate_sequence(extractor: DenseFeatureExtractor, frames: Sequence[Path], first_annotation: Path,
                       out_dir: Path, preprocessing: FramePreprocessing, config: PropagationConfig,
                       propagate: Propagate = propagate_local) -> SequenceInfo:
    """Write ``out_dir/<frame>.png`` for every frame: the first frame's annotation copied, the others propagated."""
    if preprocessing.upsample_factor not in UPSAMPLE_FACTORS:
        raise ValueError(f"upsample_factor={preprocessing.upsample_factor}; expected one of {UPSAMPLE_FACTORS}")
    out_dir.mkdir(parents=True, exist_ok=True)
    patch = extractor.backbone.patch_size
    image, _ = preprocessing.load(frames[0], patch)
    features = frame_features(extractor, image, preprocessing.upsample_factor)
    grid = tuple(features.shape[-2:])
    first = one_hot_labels(read_label(first_annotation), grid).to(features.device)
    shutil.copyfile(first_annotation, out_dir / f"{Path(frames[0]).stem}.png")
    propagator = LabelPropagator(features, first, config, propagate)
    for path in tqdm(frames[1:], desc=out_dir.name, leave=False, unit="frame"):
        image, original = preprocessing.load(path, patch)
        soft = propagator.step(frame_features(extractor, image, preprocessing.upsample_factor))
        write_label(out_dir / f"{Path(path).stem}.png", labels_from_soft(soft, patch, original))
    return SequenceInfo(len(frames), tuple(image.shape[-2:]), grid)
