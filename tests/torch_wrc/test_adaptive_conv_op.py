"""wrc::adaptive_conv: opcheck, float64 gradcheck of every tap, and parity with the unfold reference in
float32, float16 and bfloat16 (CPU here, CUDA where a GPU exists). The parity shapes have more than 256 pixels,
so the CUDA filter gradient (one thread per pixel and tap) launches several thread blocks. Without the extension
these tests skip, or fail where a GPU is visible (tests/torch_wrc/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from wrc.ops.adaptive_conv import adaptive_conv_reference

TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def problem(device, dtype, b=2, c=3, h=5, w=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(b, c, h + k - 1, w + k - 1, generator=g, dtype=torch.float64)
    filters = torch.randn(b, h, w, k, k, generator=g, dtype=torch.float64) / k
    return input.to(device=device, dtype=dtype), filters.to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_opcheck(device, dtype):
    input, filters = problem(device, dtype)
    torch.library.opcheck(torch.ops.wrc.adaptive_conv.default, (input.requires_grad_(), filters.requires_grad_()))
    grad = torch.randn(2, 3, 5, 6, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.wrc._adaptive_conv_input_grad.default, (grad, filters.detach()))
    torch.library.opcheck(torch.ops.wrc._adaptive_conv_filter_grad.default, (grad, input.detach(), 3))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_gradcheck_float64_covers_every_tap(device, k):
    """The full Jacobian, filters included: FeatUp's CUDA kernel gives 7 of 49 taps a gradient."""
    input, filters = problem(device, torch.float64, b=1, c=2, h=3, w=4, k=k)
    assert torch.autograd.gradcheck(torch.ops.wrc.adaptive_conv, (input.requires_grad_(), filters.requires_grad_()))


def test_filter_gradient_of_every_tap_matches_the_reference(device):
    input, filters = problem(device, torch.float32, k=7, h=12, w=11)  # 2 x 12 x 11 = 264 pixels
    grad = torch.randn(2, 3, 12, 11, device=device)
    fused = torch.ops.wrc._adaptive_conv_filter_grad(grad, input, 7)
    ref_filters = filters.clone().requires_grad_()
    adaptive_conv_reference(input, ref_filters).backward(grad)
    torch.testing.assert_close(fused, ref_filters.grad, rtol=1e-5, atol=1e-5)
    assert (fused.abs().amax(dim=(0, 1, 2)) > 0).all(), "some tap received no gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_parity_forward_and_backward(device, dtype):
    """Fused in ``dtype`` against the float64 reference on the same (rounded) inputs."""
    input, filters = problem(device, dtype, c=16, h=12, w=11, k=7)  # 264 pixels
    grad = torch.randn(2, 16, 12, 11, dtype=torch.float64).to(device=device, dtype=dtype)
    fused_in, fused_f = input.clone().requires_grad_(), filters.clone().requires_grad_()
    out = torch.ops.wrc.adaptive_conv(fused_in, fused_f)
    out.backward(grad)
    ref_in, ref_f = input.double().requires_grad_(), filters.double().requires_grad_()
    ref = adaptive_conv_reference(ref_in, ref_f)
    ref.backward(grad.double())
    tol = TOLERANCES[dtype]
    assert out.dtype == dtype
    for got, want in ((out, ref), (fused_in.grad, ref_in.grad), (fused_f.grad, ref_f.grad)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * scale)


def test_non_contiguous_inputs(device):
    input, filters = problem(device, torch.float32, k=3)
    input_t = input.transpose(-1, -2).contiguous().transpose(-1, -2)
    torch.testing.assert_close(torch.ops.wrc.adaptive_conv(input_t, filters), adaptive_conv_reference(input, filters))


def test_bad_input_is_a_clear_error():
    input, filters = problem("cpu", torch.float32)
    with pytest.raises(RuntimeError, match=r"input must be \(B, C, H \+ k - 1, W \+ k - 1\)"):
        torch.ops.wrc.adaptive_conv(input[..., 1:], filters)
    with pytest.raises(RuntimeError, match="filters must have the input's dtype"):
        torch.ops.wrc.adaptive_conv(input, filters.double())
    with pytest.raises(RuntimeError, match="supports float32, float64, float16 and bfloat16"):
        torch.ops.wrc.adaptive_conv(input.int(), filters.int())
