"""Upsampler.forward refuses inputs it would silently mis-handle, naming the argument and what it expects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wrc import create_upsampler


def _inputs(channels: int = 8, patch: int = 16, grid=(3, 5)):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, channels, *grid, generator=g),
            torch.rand(2, 3, grid[0] * patch, grid[1] * patch, generator=g))


@pytest.fixture
def up():
    return create_upsampler("bilinear", 8, 16)


# ---------------------------------------------------------------------------------------------------------------
# image: float RGB in [0, 1]
# ---------------------------------------------------------------------------------------------------------------


def test_uint8_image_is_refused(up):
    feats, image = _inputs()
    with pytest.raises(TypeError, match=r"image must be float RGB in \[0, 1\]; got dtype torch.uint8 .*/ 255"):
        up(feats, (image * 255).to(torch.uint8))


def test_image_in_0_255_is_refused(up):
    feats, image = _inputs()
    with pytest.raises(ValueError, match=r"image must be float RGB in \[0, 1\]; got values in .*divide by 255"):
        up(feats, image * 255)


def test_normalised_image_is_refused(up):
    feats, image = _inputs()
    normalised = (image - 0.45) / 0.225
    with pytest.raises(ValueError, match=r"image must be float RGB in \[0, 1\]; got values in \[-"):
        up(feats, normalised)


def test_overshoot_beyond_the_tolerance_is_refused(up):
    feats, image = _inputs()
    image[0, 0, 0, 0] = 1.05  # e.g. an unclamped bicubic resize
    with pytest.raises(ValueError, match=r"image must be float RGB in \[0, 1\].*clamp\(0, 1\)"):
        up(feats, image)


def test_rounding_within_the_tolerance_is_accepted(up):
    feats, image = _inputs()
    image[0, 0, 0, 0], image[1, 2, 0, 0] = 1.005, -0.005
    assert up(feats, image).shape == (2, 8, 48, 80)
    bf16 = torch.ones_like(image, dtype=torch.bfloat16).nextafter(torch.tensor(2.0, dtype=torch.bfloat16))  # 1.0078
    assert up(feats.bfloat16(), bf16).dtype == torch.bfloat16


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_image_is_refused(up, value):
    feats, image = _inputs()
    image[1, 1, 2, 3] = value
    with pytest.raises(ValueError, match=r"image must hold finite float RGB in \[0, 1\]; got 1 NaN/inf of"):
        up(feats, image)


# ---------------------------------------------------------------------------------------------------------------
# features: floating point, finite
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_non_floating_features_are_refused(up, dtype):
    feats, image = _inputs()
    with pytest.raises(TypeError, match=f"features must be a floating-point tensor; got dtype {dtype}"):
        up(feats.to(dtype), image)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_features_are_refused(up, value):
    feats, image = _inputs()
    feats[0, 3, 1, 1] = value
    with pytest.raises(ValueError, match=r"features must hold finite values; got 1 NaN/inf of 240 values"):
        up(feats, image)


def test_non_finite_features_are_refused_by_a_learned_upsampler():
    """The check lives in the base class: every method gets it (here a fixed-factor one)."""
    feats, image = _inputs(16)
    feats[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="features must hold finite values"):
        create_upsampler("lift", 16, 16, image_channels=4)(feats, image)


# ---------------------------------------------------------------------------------------------------------------
# output_size: two positive ints
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(6, 10), [6, 10], torch.Size([6, 10]), (np.int64(6), np.int32(10)),
                                  np.array([6, 10])])
def test_integer_output_sizes_are_accepted(up, size):
    out = up(*_inputs(), output_size=size)
    assert out.shape == (2, 8, 6, 10)


@pytest.mark.parametrize("size", [(7.9, 7.9), (6.0, 10.0), (np.float32(6), 10), (0, 4), (-1, 4), (6,), (6, 10, 1),
                                  6, "ab", (True, True), (torch.tensor(6), 10)])
def test_bad_output_sizes_are_refused(up, size):
    with pytest.raises(ValueError, match=r"output_size must be two positive ints \(H', W'\); got "):
        up(*_inputs(), output_size=size)


def test_fractional_sizes_are_named_not_truncated(up):
    with pytest.raises(ValueError, match=r"got \(7\.9, 7\.9\)"):
        up(*_inputs(), output_size=(7.9, 7.9))


def test_checks_do_not_break_the_graph_under_torch_compile(up):
    """Value checks read data back to the host; compiled code skips them (and must not graph-break)."""
    feats, image = _inputs()
    compiled = torch.compile(up, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(feats, image, output_size=(6, 10)), up(feats, image, output_size=(6, 10)))
