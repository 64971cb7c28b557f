"""Files in the formats real datasets use: RGB images, grey-level and palette label PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """The VOC colour map: bits of the index spread over the high bits of R, G and B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def save_rgb(path: Path, height: int = 48, width: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def save_label(path: Path, values: list[int], height: int = 48, width: int = 64, palette: bool = False) -> None:
    """A label PNG made of vertical stripes of ``values``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stripes = np.repeat(np.array(values, dtype=np.uint8), -(-width // len(values)))[:width]
    image = Image.fromarray(np.tile(stripes, (height, 1)), mode="P" if palette else "L")
    if palette:
        image.putpalette(voc_palette())
    image.save(path)
