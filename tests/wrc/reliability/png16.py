"""Test helper: PNG files written byte by byte (zlib + struct), for the 16-bit colour images Pillow cannot write.

Every PNG row filter (None, Sub, Up, Average, Paeth) is used in turn, so a reader must undo all of them.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_row(kind: int, row: np.ndarray, prior: np.ndarray, bpp: int) -> bytes:
    """One scanline filtered with PNG filter ``kind`` (the encoder side: from the original bytes)."""
    left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
    up_left = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
    predictor = [np.zeros_like(row), left, prior, (left + prior) // 2, _paeth(left, prior, up_left)][kind]
    return bytes([kind]) + ((row - predictor) % 256).astype(np.uint8).tobytes()


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """Write (H, W) or (H, W, C) uint16 ``pixels`` (C = 2, 3 or 4) as a 16-bit PNG, big-endian as the format says."""
    pixels = np.asarray(pixels, dtype=np.uint16)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    height, width = pixels.shape[:2]
    raw = pixels.astype(">u2").reshape(height, width * channels).view(np.uint8).astype(np.int32)
    bpp, prior, rows = 2 * channels, np.zeros(raw.shape[1], np.int32), []
    for y in range(height):
        rows.append(_filter_row(y % 5, raw[y], prior, bpp))
        prior = raw[y]
    header = struct.pack(">IIBBBBB", width, height, 16, COLOUR_TYPES[channels], 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
                     + _chunk(b"IEND", b""))
    return path
