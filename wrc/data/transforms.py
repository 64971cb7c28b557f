"""Image loading and the deterministic crop policy shared by every dataset."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def resized_crop(image: Image.Image, size: int, rng: random.Random | None, min_scale: float = 1.0) -> Image.Image:
    """Square crop of ``size`` pixels.

    With ``rng`` (training): a random crop covering a fraction in [min_scale, 1] of the short side's
    square, at a random position, random horizontal flip. Without (evaluation): resize the short side
    to ``size`` and take the centre. Randomness comes only from ``rng``, seeded per sample, so data
    order and augmentation are reproducible across workers and across a resume.
    """
    width, height = image.size
    short = min(width, height)
    if rng is None:
        side, left, top = short, (width - short) // 2, (height - short) // 2
    else:
        side = max(1, int(round(short * math.sqrt(rng.uniform(min_scale, 1.0)))))
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
    image = image.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
    if rng is not None and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image
