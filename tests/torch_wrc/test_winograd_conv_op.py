"""wrc::winograd_conv3x3 and wrc::winograd_weights (CPU inference) against direct convolution in float64 (the
oracle), hand-computed transformed kernels, and their refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

torch_wrc = pytest.importorskip("torch_wrc")
pytestmark = pytest.mark.skipif(not torch_wrc.is_available(), reason="torch_wrc not built")

CL = torch.channels_last
G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)


def problem(n, c_in, c_out, h, w, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64).relu()  # post-ReLU inputs, as in the networks
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) / (9 * c_in) ** 0.5
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(x).contiguous(memory_format=CL), cast(weight), cast(b)


# odd sizes (half tiles at the bottom and right), 1 x 1 and thin maps, batches, and sizes of several tile blocks
SHAPES = [(1, 5, 3, 1, 1), (1, 4, 6, 1, 2), (2, 7, 9, 3, 5), (1, 17, 13, 8, 9), (2, 3, 2, 7, 1),
          (1, 256, 96, 41, 40)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_float64_equals_direct_convolution(shape, bias):
    x, weight, b = problem(*shape, torch.float64, bias)
    out = torch.ops.wrc.winograd_conv3x3(x, weight, b)
    expected = F.conv2d(x, weight, b, padding=1)
    assert out.shape == expected.shape and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_within_a_few_roundings_of_direct_convolution(shape):
    x, weight, b = problem(*shape, torch.float64)
    expected = F.conv2d(x, weight, b, padding=1)
    direct = F.conv2d(x.float(), weight.float(), b.float(), padding=1).double()
    out = torch.ops.wrc.winograd_conv3x3(x.float(), weight.float(), b.float()).double()
    scale = expected.abs().max()
    # the transforms add and subtract up to 4 values per tile: a few times direct convolution's rounding
    assert (out - expected).abs().max() <= 4 * (direct - expected).abs().max() + 1e-6 * scale


def test_any_input_layout_and_a_kept_transform_give_the_same_bits():
    x, weight, b = problem(2, 9, 11, 6, 7, torch.float32)
    out = torch.ops.wrc.winograd_conv3x3(x, weight, b)
    assert torch.equal(torch.ops.wrc.winograd_conv3x3(x.contiguous(), weight.contiguous(), b), out)
    transformed = torch.ops.wrc.winograd_weights(weight)
    assert torch.equal(torch.ops.wrc.winograd_conv3x3(x, weight, b, transformed), out)


def test_transformed_weights_are_g_kernel_g_transposed():
    _, weight, _ = problem(1, 5, 3, 2, 2, torch.float64)
    u = torch.ops.wrc.winograd_weights(weight)  # (16, C_out, C_in)
    expected = torch.einsum("ai,ocij,bj->aboc", G, weight, G).reshape(16, 3, 5)
    torch.testing.assert_close(u, expected, rtol=0, atol=1e-15)
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)  # by hand: G 1 G^T = outer(G 1, G 1), G 1 = (1, 1.5, 0.5, 1)
    row = torch.tensor([1.0, 1.5, 0.5, 1.0], dtype=torch.float64)
    assert torch.equal(torch.ops.wrc.winograd_weights(ones).view(4, 4), torch.outer(row, row))


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
    with pytest.raises(RuntimeError, match="transformed_weight must be winograd_weights"):
        op(x, weight, b, torch.ops.wrc.winograd_weights(weight)[:, :5])
    with pytest.raises(RuntimeError, match="float32 and float64"):
        op(x.half(), weight.half(), None)


def test_inference_mode_then_no_grad():
    """The thread's buffers, first made under inference mode, are written again outside it (512 channels in
    float64: larger than any earlier call here, so the buffers are made anew inside inference mode)."""
    x, weight, b = problem(1, 512, 512, 32, 32, torch.float64)
    with torch.inference_mode():
        inside = torch.ops.wrc.winograd_conv3x3(x, weight, b)
    with torch.no_grad():
        assert torch.equal(torch.ops.wrc.winograd_conv3x3(x, weight, b), inside)


def test_has_no_backward():
    x, weight, b = problem(1, 4, 6, 5, 5, torch.float32)
    out = torch.ops.wrc.winograd_conv3x3(x.requires_grad_(), weight, b)
    with pytest.raises(RuntimeError, match="inference kernel without a backward"):
        out.sum().backward()


def test_passes_opcheck():
    x, weight, b = problem(1, 4, 6, 5, 5, torch.float64)
    torch.library.opcheck(torch.ops.wrc.winograd_conv3x3.default, (x, weight, b, None),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.wrc.winograd_weights.default, (weight,), test_utils=("test_schema",
                                                                                          "test_faketensor"))
