"""wrc::winograd_conv3x3 (CPU inference), F(2x2, 3x3) and F(4x4, 3x3), against direct convolution in float64 (the
oracle), a hand-counted case, and its refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

torch_wrc = pytest.importorskip("torch_wrc")
pytestmark = pytest.mark.skipif(not torch_wrc.is_available(), reason="torch_wrc not built")

CL = torch.channels_last
TILES = [2, 4]


def problem(n, c_in, c_out, h, w, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64).relu()  # post-ReLU inputs, as in the networks
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) / (9 * c_in) ** 0.5
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(x).contiguous(memory_format=CL), cast(weight), cast(b)


# odd sizes (partial tiles at the bottom and right: 2x2 and 4x4 tiles cut to 1-3 rows or columns), 1 x 1 and thin
# maps, batches, wide channels, and (the last) two blocks of tiles for either tile size, the first ending inside the
# second sample
SHAPES = [(1, 5, 3, 1, 1), (1, 4, 6, 1, 2), (2, 7, 9, 3, 5), (1, 17, 13, 8, 9), (2, 3, 2, 7, 1), (1, 6, 5, 6, 11),
          (1, 256, 96, 41, 40), (3, 64, 48, 70, 69)]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_float64_equals_direct_convolution(shape, bias, tile):
    x, weight, b = problem(*shape, torch.float64, bias)
    out = torch.ops.wrc.winograd_conv3x3(x, weight, b, tile)
    expected = F.conv2d(x, weight, b, padding=1)
    assert out.shape == expected.shape and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_within_a_few_roundings_of_direct_convolution(shape, tile):
    x, weight, b = problem(*shape, torch.float64)
    expected = F.conv2d(x, weight, b, padding=1)
    direct = F.conv2d(x.float(), weight.float(), b.float(), padding=1).double()
    out = torch.ops.wrc.winograd_conv3x3(x.float(), weight.float(), b.float(), tile).double()
    scale = expected.abs().max()
    # the transforms combine 4 (F(2x2)) or 6 (F(4x4), coefficients up to 8) values per tile row and column: a few
    # times direct convolution's rounding (F(4x4): up to 3.5x for the narrow maps, where the 1e-6 of the scale
    # covers it)
    assert (out - expected).abs().max() <= 4 * (direct - expected).abs().max() + 1e-6 * scale


@pytest.mark.parametrize("tile, dtype", [(2, torch.float32), (4, torch.float64)])
def test_ones_count_the_neighbours_in_the_map(tile, dtype):
    """All-ones image and kernels, by hand: each output counts its 3x3 neighbours inside the map (4 at a corner, 6
    on an edge, 9 inside), times the input channels. F(2x2)'s transforms only add, subtract and halve: exact in
    float32; F(4x4)'s kernel transform has thirds and fifteenths: to float64 rounding."""
    x = torch.ones(1, 3, 7, 6, dtype=dtype).contiguous(memory_format=CL)
    out = torch.ops.wrc.winograd_conv3x3(x, torch.ones(2, 3, 3, 3, dtype=dtype), None, tile)
    rows = torch.tensor([2.0, 3, 3, 3, 3, 3, 2], dtype=dtype)[:, None]
    cols = torch.tensor([2.0, 3, 3, 3, 3, 2], dtype=dtype)[None, :]
    expected = (3 * rows * cols).expand(1, 2, 7, 6)
    if tile == 2:
        assert torch.equal(out, expected)
    else:
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-13)


def test_any_input_layout_gives_the_same_bits():
    x, weight, b = problem(2, 9, 11, 6, 7, torch.float32)
    for tile in TILES:
        out = torch.ops.wrc.winograd_conv3x3(x, weight, b, tile)
        assert torch.equal(torch.ops.wrc.winograd_conv3x3(x.contiguous(), weight.contiguous(), b, tile), out)


def test_sees_in_place_changes_of_the_weight():
    """The kernels are transformed on every call: a change made through ``.data`` (no version bump) is used."""
    x, weight, b = problem(1, 8, 8, 8, 8, torch.float32)
    torch.ops.wrc.winograd_conv3x3(x, weight, b)
    weight.data.mul_(2)
    torch.testing.assert_close(torch.ops.wrc.winograd_conv3x3(x, weight, b), F.conv2d(x, weight, b, padding=1),
                               rtol=1e-5, atol=1e-5)


def test_refuses_bad_arguments():
    x, weight, b = problem(1, 4, 6, 5, 5, torch.float32)
    op = torch.ops.wrc.winograd_conv3x3
    with pytest.raises(RuntimeError, match=r"x must be \(N, C_in, H, W\)"):
        op(x[0], weight, b)
    with pytest.raises(RuntimeError, match=r"weight must be \(C_out, C_in, 3, 3\)"):
        op(x, weight[:, :, :2], b)
    with pytest.raises(RuntimeError, match="with C_in = 4"):
        op(x, weight[:, :3], b)
    with pytest.raises(RuntimeError, match="weight must have x's dtype"):
        op(x, weight.double(), b)
    with pytest.raises(RuntimeError, match=r"bias must be \(C_out,\) = \(6,\)"):
        op(x, weight, b[:5])
    with pytest.raises(RuntimeError, match=r"tile must be 2 \(F\(2x2, 3x3\)\) or 4 \(F\(4x4, 3x3\)\); got 3"):
        op(x, weight, b, 3)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        op(x.half(), weight.half(), None)


@pytest.mark.parametrize("tile", TILES)
def test_inference_mode_then_no_grad(tile):
    """The thread's buffers, first made under inference mode, are written again outside it (512 channels in
    float64: larger than any earlier call here, so the buffers are made anew inside inference mode)."""
    x, weight, b = problem(1, 512, 512, 32, 32, torch.float64)
    with torch.inference_mode():
        inside = torch.ops.wrc.winograd_conv3x3(x, weight, b, tile)
    with torch.no_grad():
        assert torch.equal(torch.ops.wrc.winograd_conv3x3(x, weight, b, tile), inside)


def test_has_no_backward():
    x, weight, b = problem(1, 4, 6, 5, 5, torch.float32)
    out = torch.ops.wrc.winograd_conv3x3(x.requires_grad_(), weight, b)
    with pytest.raises(RuntimeError, match="inference kernel without a backward"):
        out.sum().backward()


@pytest.mark.parametrize("tile", TILES)
def test_passes_opcheck(tile):
    x, weight, b = problem(1, 4, 6, 5, 5, torch.float64)
    torch.library.opcheck(torch.ops.wrc.winograd_conv3x3.default, (x, weight, b, tile),
                          test_utils=("test_schema", "test_faketensor"))
