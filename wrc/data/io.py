"""The one image reader of every training and evaluation image: RGB in [0, 1], scaled by the real bit depth.

Pillow's ``convert("RGB")`` clips 16-bit grey images ("I;16", "I") to 255, so they came out pure white, and it
opens 16-bit colour PNGs through their high bytes only. Here 8-bit images are divided by 255, 16-bit ones by
65535 (colour PNGs decoded from both bytes of every sample), float images ("F") are clipped to [0, 1];
palette, grey, alpha, CMYK and YCbCr images are converted to RGB (alpha is dropped). Anything else (LAB,
32-bit integers, ...) raises ``UnreadableImageError`` naming the file and the mode instead of guessing, and so
does an image over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``): the training loader
skips and counts such files like any other unreadable image.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV")
SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")
# 16-bit colour PNG colour types -> (Pillow's raw mode for the high bytes, the raw mode that reads the other byte)
PNG16_COLOUR = {2: ("RGB;16B", "RGB;16L"), 6: ("RGBA;16B", "RGBA;16L"), 4: ("LA;16B", "RGBA")}


class UnreadableImageError(ValueError):
    """An image that cannot be read as RGB in [0, 1]; the message names the file and why."""


class PngHeader(NamedTuple):
    bit_depth: int
    colour_type: int


def png_header(path: Path) -> PngHeader | None:
    """Bit depth and colour type from a PNG's IHDR chunk (None for other formats): Pillow's mode hides the depth."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return PngHeader(head[24], head[25])


def open_image(path: Path) -> Image.Image:
    """``Image.open`` with decompression bombs (over ``MAX_IMAGE_PIXELS``, not only over twice it) rejected."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise UnreadableImageError(f"{path}: {err}") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise UnreadableImageError(
            f"{path}: {image.width}x{image.height} pixels exceed Pillow's decompression-bomb limit of {limit} pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS; raise it to read this file)"
        )
    return image


def decode_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) pixels at their native precision: uint8 for 8-bit sources, float32 in [0, 1] otherwise.

    8-bit images stay uint8 so that crops resample them exactly as before (Pillow's RGB path); callers that
    want a tensor use ``read_rgb``.
    """
    path = Path(path)
    header = png_header(path)
    with open_image(path) as image:
        if header is not None and header.bit_depth == 16 and header.colour_type in PNG16_COLOUR:
            return _png16_colour(path, image, header.colour_type)
        return _pixels(image, path, header.bit_depth if header is not None else None)


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """The image at ``path`` as a float32 tensor (3, H, W) in [0, 1], scaled by its real bit depth."""
    return array_to_tensor(decode_rgb(path))


def array_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 (divided by 255) or float in [0, 1] -> float32 tensor (3, H, W)."""
    pixels = np.ascontiguousarray(pixels)
    tensor = torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy()).permute(2, 0, 1)
    return tensor.float().div_(255.0) if pixels.dtype == np.uint8 else tensor.float().contiguous()


def _pixels(image: Image.Image, path: Path, bit_depth: int | None) -> np.ndarray:
    """Pixels of an already opened image by mode (16-bit colour PNGs are handled before)."""
    mode = image.mode
    if mode in EIGHT_BIT_MODES:
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # Pillow warns when a palette with transparency goes straight to RGB
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode in SIXTEEN_BIT_GREY:
        return _grey(np.asarray(image).astype(np.float32) / 65535.0)
    if mode == "I":
        return _grey(_scaled_integers(image, path, bit_depth))
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise UnreadableImageError(f"{path}: float image (mode 'F') holds NaN or infinite values")
        return _grey(values.clip(0.0, 1.0))
    raise UnreadableImageError(
        f"{path}: Pillow mode {mode!r} is not supported; expected an 8-bit image ({', '.join(EIGHT_BIT_MODES)}), "
        "16-bit grey (I;16) or colour PNG, or a float image (F)"
    )


def _scaled_integers(image: Image.Image, path: Path, bit_depth: int | None) -> np.ndarray:
    """A 32-bit integer image ("I") holding samples of a known depth <= 16 bits, divided by 2^depth - 1."""
    if bit_depth is None and hasattr(image, "tag_v2"):  # TIFF: BitsPerSample
        bits = image.tag_v2.get(258)
        bit_depth = int(bits[0] if isinstance(bits, tuple) else bits) if bits else None
    if bit_depth is None or not 1 <= bit_depth <= 16:
        raise UnreadableImageError(
            f"{path}: Pillow mode 'I' with {bit_depth or 'unknown'} bits per sample is not supported; "
            "expected 8- or 16-bit samples"
        )
    values = np.asarray(image, dtype=np.float64) / float(2**bit_depth - 1)
    return values.clip(0.0, 1.0).astype(np.float32)


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def _png16_colour(path: Path, image: Image.Image, colour_type: int) -> np.ndarray:
    """A 16-bit RGB, RGBA or grey+alpha PNG from both bytes of each sample.

    Pillow decodes these through the high bytes; decoding the same stream again with a raw mode that takes
    the other byte of each 16-bit sample (Pillow still undoes the PNG filters) recovers the low bytes.
    """
    high_mode, low_mode = PNG16_COLOUR[colour_type]
    raw_mode = image.tile[0][3] if image.tile else None
    if raw_mode != high_mode:
        raise UnreadableImageError(
            f"{path}: 16-bit colour PNG (colour type {colour_type}) decoded by Pillow {Image.__version__} as mode "
            f"{image.mode!r} from raw mode {raw_mode!r}, not {high_mode!r}: not supported by this reader"
        )
    if colour_type == 4:  # L_hi L_lo A_hi A_lo is byte for byte an 8-bit RGBA pixel
        raw = _decode_as(path, low_mode).astype(np.float32)
        return _grey((raw[..., 0] * 256 + raw[..., 1]) / 65535.0)
    high = np.asarray(image).astype(np.float32)
    low = _decode_as(path, low_mode).astype(np.float32)
    return ((high[..., :3] * 256 + low[..., :3]) / 65535.0).astype(np.float32)


def _decode_as(path: Path, raw_mode: str) -> np.ndarray:
    """Decode the PNG at ``path`` again, unpacking its (unfiltered) bytes with ``raw_mode``."""
    with open_image(path) as image:
        image.tile = [tile._replace(args=raw_mode) if hasattr(tile, "_replace") else (*tile[:3], raw_mode)
                      for tile in image.tile]
        return np.asarray(image)
