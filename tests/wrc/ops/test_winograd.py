"""wrc.ops.winograd: the tile chosen by size, the wrapper's refusals, and its reference path (F.conv2d) where the
kernel cannot serve (gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wrc.ops.winograd import FOUR_BY_FOUR_MIN_TILES, winograd_conv3x3, winograd_tile


@pytest.mark.parametrize("shape, tile", [
    ((1, 8, 32, 32), 2),    # 64 tiles of 4 x 4: the transformed kernels would cost more than the products save
    ((1, 8, 45, 45), 4),    # 12 x 12 = 144 tiles (partial ones count)
    ((2, 8, 32, 32), 4),    # a batch shares the kernels: 128 tiles
    ((1, 8, 64, 64), 4),
    ((1, 8, 1, 4000), 4),   # 1000 tiles of one row
])
def test_tile_by_the_number_of_4x4_tiles(shape, tile):
    assert FOUR_BY_FOUR_MIN_TILES == 128
    assert winograd_tile(torch.empty(shape)) == tile


def test_refuses_bad_arguments():
    x, weight = torch.randn(1, 4, 6, 6), torch.randn(5, 4, 3, 3)
    with pytest.raises(ValueError, match="tile must be 2"):
        winograd_conv3x3(x, weight, tile=3)
    with pytest.raises(ValueError, match=r"weight \(C_out, C_in, 3, 3\)"):
        winograd_conv3x3(x, weight[:, :3])
    with pytest.raises(ValueError, match=r"bias must be \(C_out,\) = \(5,\)"):
        winograd_conv3x3(x, weight, torch.zeros(4))


@pytest.mark.parametrize("tile", [None, 2, 4])
def test_equals_direct_convolution_with_and_without_gradients(tile):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(7, 6, 3, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    expected = F.conv2d(x, weight, bias, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(winograd_conv3x3(x, weight, bias, tile), expected, rtol=1e-12, atol=1e-12)
    out = winograd_conv3x3(x, weight.requires_grad_(), bias, tile)  # gradients wanted: the reference, F.conv2d
    out.sum().backward()
    assert weight.grad is not None and out.is_contiguous(memory_format=torch.channels_last)
