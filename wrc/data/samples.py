"""Built-in sample images: procedurally generated scenes that need no download.

Each scene is a deterministic function of its seed: a smooth two-colour background, then a few
shapes (ellipses, rectangles, triangles) filled with flat colour, stripes, checkers or noise, with
sharp boundaries. That gives the structure dense features care about (objects, textures, edges)
at any resolution, so the quickstart, the tests and the benchmarks run anywhere.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TRAIN_SEED_OFFSET, VAL_SEED_OFFSET = 0, 1_000_000


def _texture(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """An (size, size, 3) uint8 texture in one of four styles around ``colour``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    style = rng.integers(4)
    if style == 0:  # flat
        pattern = np.zeros((size, size), np.float32)
    elif style == 1:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        pattern = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif style == 2:  # checkerboard
        cell = int(rng.integers(6, 20))
        pattern = (((xx // cell) + (yy // cell)) % 2) * 2 - 1
    else:  # smooth noise
        coarse = rng.uniform(-1, 1, (max(2, size // 16), max(2, size // 16))).astype(np.float32)
        pattern = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    second = rng.uniform(0, 255, 3)
    mix = (pattern[..., None] * 0.5 + 0.5).clip(0, 1) * rng.uniform(0.2, 0.8)
    return (colour * (1 - mix) + second * mix).clip(0, 255).astype(np.uint8)


def generate_scene(seed: int, size: int = 256) -> Image.Image:
    """A deterministic RGB scene of ``size`` x ``size`` pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle))[..., None]
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    canvas = Image.fromarray((top * (1 - t) + bottom * t).astype(np.uint8))
    for _ in range(int(rng.integers(3, 8))):
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(size * 0.08, size * 0.35, 2)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        elif kind == 1:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        else:
            points = [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in rng.uniform(0, 2 * np.pi, 3)]
            draw.polygon(points, fill=255)
        texture = Image.fromarray(_texture(rng, size, rng.uniform(0, 255, 3)))
        canvas.paste(texture, (0, 0), mask)
    return canvas.filter(ImageFilter.GaussianBlur(radius=0.6))
