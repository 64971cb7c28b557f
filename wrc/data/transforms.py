"""Pixels to tensors and the deterministic crop policy shared by every dataset."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

from wrc.data.io import array_to_tensor

Pixels = Image.Image | np.ndarray  # PIL RGB, or (H, W, 3) from wrc.data.io.decode_rgb (uint8 or float in [0, 1])


def to_tensor(image: Pixels) -> torch.Tensor:
    """PIL RGB or decoded pixels -> float tensor (3, H, W) in [0, 1]."""
    if isinstance(image, np.ndarray):
        return array_to_tensor(image)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def crop_geometry(width: int, height: int, rng: random.Random | None,
                  min_scale: float = 1.0) -> tuple[tuple[int, int, int, int], bool]:
    """(box, flip) of the square crop ``resized_crop`` takes from a ``width`` x ``height`` image: with ``rng`` a
    random square covering a fraction in [min_scale, 1] of the short side's square at a random position and a
    random horizontal flip; without, the centre square. The same draw applies to the image's masks."""
    short = min(width, height)
    if rng is None:
        side, left, top = short, (width - short) // 2, (height - short) // 2
    else:
        side = max(1, int(round(short * math.sqrt(rng.uniform(min_scale, 1.0)))))
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
    flip = rng is not None and rng.random() < 0.5
    return (left, top, left + side, top + side), flip


def resized_crop(image: Pixels, size: int, rng: random.Random | None, min_scale: float = 1.0) -> Pixels:
    """Square crop of ``size`` pixels (``crop_geometry``: random with ``rng`` in training, the centre without).

    Randomness comes only from ``rng``, seeded per sample, so data order and augmentation are reproducible across
    workers and across a resume. 8-bit pixels (PIL or uint8) are resampled as an RGB image and returned as one;
    float pixels (16-bit sources) channel by channel in float32, with the same geometry and filter, and returned as
    an array.
    """
    return crop_image(image, size, *crop_geometry(*image_size_of(image), rng, min_scale))


def image_size_of(image: Pixels) -> tuple[int, int]:
    """(width, height) of PIL or decoded pixels."""
    return (image.shape[1], image.shape[0]) if isinstance(image, np.ndarray) else (image.width, image.height)


def crop_image(image: Pixels, size: int, box: tuple[int, int, int, int], flip: bool) -> Pixels:
    """``box`` of ``image`` resized (bicubic) to ``size`` x ``size``, mirrored when ``flip``."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        image = Image.fromarray(image)
    if isinstance(image, np.ndarray):
        return _resize_float(image, size, box, flip)
    image = image.resize((size, size), Image.BICUBIC, box=box)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image


def crop_mask(mask: np.ndarray, size: int, box: tuple[int, int, int, int], flip: bool) -> torch.Tensor:
    """A binary (H, W) mask through the geometry of ``crop_image``: ``box`` resized to ``size`` x ``size`` by nearest
    neighbour at pixel centres, mirrored when ``flip``; (size, size) bool."""
    left, top, right, bottom = box
    region = torch.from_numpy(np.ascontiguousarray(mask[top:bottom, left:right], dtype=np.uint8))
    resized = torch.nn.functional.interpolate(region[None, None].float(), size=(size, size), mode="nearest-exact")
    resized = resized[0, 0] > 0.5
    return resized.flip(-1) if flip else resized


def _resize_float(pixels: np.ndarray, size: int, box: tuple[int, int, int, int], flip: bool) -> np.ndarray:
    """Bicubic resize of float (H, W, 3) pixels, one 32-bit float ("F") channel at a time, clipped to [0, 1]."""
    channels = []
    for c in range(pixels.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(pixels[..., c], dtype=np.float32))
        channel = channel.resize((size, size), Image.BICUBIC, box=box)
        channels.append(np.asarray(channel.transpose(Image.FLIP_LEFT_RIGHT) if flip else channel))
    return np.stack(channels, axis=2).clip(0.0, 1.0)
