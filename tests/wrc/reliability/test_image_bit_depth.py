"""Guarantee: every training and evaluation image is read at its real bit depth (16-bit grey and colour PNGs are
not white or truncated), other modes are converted or refused by name, and in the training loader decompression
bombs and images smaller than a patch are skipped and counted instead of crashing or being upscaled silently.

The oracle is independent of the reader: the integer array written to the file, divided by 65535 (or 255)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from tests.wrc.reliability.png16 import write_png16
from wrc.data import ImageFolder, UnreadableImageError, build_dataset, read_rgb
from wrc.data.io import _pixels
from wrc.data.transforms import resized_crop, to_tensor


def _as_chw(array: np.ndarray, scale: float) -> torch.Tensor:
    """The expected (3, H, W) tensor: grey replicated to RGB, alpha dropped."""
    array = array.astype(np.float64) / scale
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] == 2:
        array = np.repeat(array[..., :1], 3, axis=2)
    return torch.from_numpy(array[..., :3].astype(np.float32)).permute(2, 0, 1)


def _ramp(shape, high=65535) -> np.ndarray:
    """Distinct values across the whole range, including 0 and ``high``."""
    values = np.linspace(0, high, int(np.prod(shape))).round().astype(np.uint16)
    return np.random.default_rng(0).permutation(values).reshape(shape)


def test_16_bit_grey_written_by_pillow(tmp_path):
    pixels = _ramp((20, 24))
    Image.fromarray(pixels).save(tmp_path / "grey16.png")  # Pillow writes uint16 arrays as mode I;16
    torch.testing.assert_close(read_rgb(tmp_path / "grey16.png"), _as_chw(pixels, 65535), atol=1e-7, rtol=0)


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey_alpha", "rgb", "rgba"])
def test_16_bit_pngs_written_byte_by_byte(tmp_path, channels):
    pixels = _ramp((17, 23) if channels == 1 else (17, 23, channels))
    path = write_png16(tmp_path / "image16.png", pixels)
    torch.testing.assert_close(read_rgb(path), _as_chw(pixels, 65535), atol=1e-7, rtol=0)


def test_8_bit_images_are_read_exactly_as_before(tmp_path):
    """Regression guard: 8-bit files give the same training crops as the former PIL-only pipeline."""
    pixels = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    torch.testing.assert_close(read_rgb(tmp_path / "a.png"), _as_chw(pixels, 255), atol=0, rtol=0)
    dataset = ImageFolder(tmp_path, 24, train=True, min_scale=0.3)
    with Image.open(tmp_path / "a.png") as image:
        before = to_tensor(resized_crop(image.convert("RGB"), 24, random.Random(5), 0.3))
    torch.testing.assert_close(dataset[(0, 5)]["image"], before, atol=0, rtol=0)


def test_the_training_loader_keeps_16_bit_precision(tmp_path):
    pixels = _ramp((32, 32, 3))
    write_png16(tmp_path / "ramp.png", pixels)
    write_png16(tmp_path / "sub" / "flat.png", np.full((40, 48, 3), 1234, np.uint16))
    dataset = ImageFolder(tmp_path, 32, train=False)
    torch.testing.assert_close(dataset[0]["image"], _as_chw(pixels, 65535), atol=1e-6, rtol=0)
    for seed in range(3):  # random crops, flips and resampling of a flat image stay at its value
        crop = ImageFolder(tmp_path / "sub", 16, train=True, min_scale=0.2)[(0, seed)]["image"]
        torch.testing.assert_close(crop, torch.full((3, 16, 16), 1234 / 65535), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "RGBA", "CMYK", "YCbCr"])
def test_8_bit_modes_are_converted(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 256, (12, 14, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "P" else rgb.quantize(16)
    suffix = ".jpg" if mode in ("CMYK", "YCbCr") else ".png"
    path = tmp_path / f"image{suffix}"
    image.save(path, **({"transparency": 0} if mode == "P" else {}))
    with Image.open(path) as reopened:
        expected = np.asarray(reopened.convert("RGB"))
    torch.testing.assert_close(read_rgb(path), _as_chw(expected, 255), atol=0, rtol=0)


def test_float_images_are_clipped_and_must_be_finite(tmp_path):
    values = np.array([[-0.5, 0.0, 0.25], [0.75, 1.0, 1.5]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "float.tiff")
    torch.testing.assert_close(read_rgb(tmp_path / "float.tiff"), _as_chw(values.clip(0, 1), 1), atol=0, rtol=0)
    values[0, 0] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tiff")
    with pytest.raises(UnreadableImageError, match=r"nan.tiff: float image .* NaN"):
        read_rgb(tmp_path / "nan.tiff")


def test_32_bit_integer_images_need_a_known_depth(tmp_path):
    grey = Image.fromarray(_ramp((6, 7))).convert("I")
    torch.testing.assert_close(torch.from_numpy(_pixels(grey, tmp_path / "x.png", 16)).permute(2, 0, 1),
                               _as_chw(_ramp((6, 7)), 65535), atol=1e-7, rtol=0)
    with pytest.raises(UnreadableImageError, match=r"x.png: Pillow mode 'I' with unknown bits per sample"):
        _pixels(grey, tmp_path / "x.png", None)
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "deep.tiff")
    with pytest.raises(UnreadableImageError, match=r"deep.tiff: Pillow mode 'I' with 32 bits per sample"):
        read_rgb(tmp_path / "deep.tiff")


def test_unsupported_modes_are_refused_by_name(tmp_path):
    with pytest.raises(UnreadableImageError, match=r"lab.tif: Pillow mode 'LAB' is not supported"):
        _pixels(Image.new("LAB", (4, 4)), tmp_path / "lab.tif", None)


def _write(path, size, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


@pytest.mark.parametrize("pixels", [18 * 18, 30 * 30], ids=["over_the_limit", "over_twice_the_limit"])
def test_decompression_bombs_are_skipped_and_counted(tmp_path, monkeypatch, caplog, pixels):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    side = int(pixels**0.5)
    _write(tmp_path / "a.png", (16, 16))
    _write(tmp_path / "b.png", (side, side))
    _write(tmp_path / "c.png", (16, 16))
    with pytest.raises(UnreadableImageError, match="b.png: .*decompression"):
        read_rgb(tmp_path / "b.png")
    dataset = ImageFolder(tmp_path, 16, train=False)
    with caplog.at_level(logging.WARNING, logger="wrc"):
        assert [dataset[i]["num_skipped"] for i in range(3)] == [0, 1, 0]
    assert "b.png" in caplog.text


def test_images_smaller_than_a_patch_are_skipped_and_counted(tmp_path, caplog):
    _write(tmp_path / "a.png", (40, 30))
    _write(tmp_path / "b.png", (8, 20))
    dataset = ImageFolder(tmp_path, 32, train=True)
    with caplog.at_level(logging.WARNING, logger="wrc"):
        assert [dataset[(i, 0)]["num_skipped"] for i in range(2)] == [0, 1]
    assert "b.png is 8x20 pixels, smaller than data.min_size=16" in caplog.text
    relaxed = build_dataset({"name": "image_folder", "root": str(tmp_path), "image_size": 32, "min_size": 8})
    assert relaxed[(1, 0)]["num_skipped"] == 0
    with pytest.raises(ValueError, match="data.min_size must be a positive number of pixels"):
        ImageFolder(tmp_path, 32, min_size=0)
