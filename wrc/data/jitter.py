"""FeatUp's geometric jitter: reflect-pad, zoom, crop, flip, applied identically to an image and to
high-resolution features on its pixel grid, so the two stay in exact pixel correspondence.

Parameters are drawn from the global torch RNG (saved in checkpoints, so resumed runs draw the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wrc.ops.padding import pad2d


@dataclass(frozen=True)
class Jitter:
    """One transform of an (H, W) map: pad ``pad`` cells, zoom by ``zoom``, crop (H, W) at (top, left), flip."""

    pad: int
    zoom: float
    top: int
    left: int
    flip: bool


def sample_jitter(height: int, width: int, max_pad: int, max_zoom: float, flips: bool = True) -> Jitter:
    """Flip with probability 1/2; zoom uniform in [1, max_zoom] with probability 1/2; a uniform crop offset."""
    if max_pad < 0 or max_zoom < 1:
        raise ValueError(f"max_pad must be >= 0 and max_zoom >= 1; got max_pad={max_pad}, max_zoom={max_zoom}")
    flip = flips and bool(torch.rand(()) < 0.5)
    zoom = 1.0 + float(torch.rand(())) * (max_zoom - 1.0) if bool(torch.rand(()) < 0.5) else 1.0
    canvas_h, canvas_w = math.floor((height + 2 * max_pad) * zoom), math.floor((width + 2 * max_pad) * zoom)
    top = int(torch.randint(0, canvas_h - height + 1, ()))
    left = int(torch.randint(0, canvas_w - width + 1, ()))
    return Jitter(max_pad, zoom, top, left, flip)


def apply_jitter(t: torch.Tensor, jitter: Jitter) -> torch.Tensor:
    """Apply ``jitter`` to (B, C, H, W); the output keeps the input's size."""
    height, width = t.shape[-2:]
    t = pad2d(t, jitter.pad, "reflect")
    if jitter.zoom > 1:
        size = (math.floor(t.shape[-2] * jitter.zoom), math.floor(t.shape[-1] * jitter.zoom))
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    t = t[..., jitter.top : jitter.top + height, jitter.left : jitter.left + width]
    return t.flip(-1) if jitter.flip else t
