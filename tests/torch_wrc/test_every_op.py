"""Contracts every torch_wrc op keeps: opcheck of the private backward ops, non-contiguous inputs and upstream
gradients, and the current (non-default) CUDA stream."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _positive(g: torch.Generator, *shape: int, low: float = 0.1) -> torch.Tensor:
    return torch.rand(*shape, generator=g, dtype=torch.float64) + low


def _block_solve(g):
    return torch.ops.wrc.block_solve, [_randn(g, 2, 3, 5, 6), _randn(g, 2, 3, 10, 12), _positive(g, 3, 2, 2),
                                       _positive(g, 2, 3, 5, 6, low=0.0), _positive(g, 2, 3, 10, 12, low=0.2)]


def _spectral(g):
    eig = _positive(g, 3, 5, 4)
    eig[:, 1:, 0] = (eig[:, 1:, 0] + eig[:, 1:, 0].flip(1)) / 2  # even in the self-conjugate columns 0 and w / 2
    eig[:, 1:, 3] = (eig[:, 1:, 3] + eig[:, 1:, 3].flip(1)) / 2
    return torch.ops.wrc.lr_spectral_solve, [_randn(g, 2, 3, 5, 6), eig, _positive(g, 2, 3), _positive(g, 2, 3)]


def _decimate(g):
    return (lambda x, k: torch.ops.wrc.decimate(x, k, 2)), [_randn(g, 2, 3, 10, 12), _positive(g, 3, 4, 4)]


def _decimate_adjoint(g):
    return (lambda y, k: torch.ops.wrc.decimate_adjoint(y, k, 2)), [_randn(g, 2, 3, 5, 6), _positive(g, 3, 4, 4)]


def _adaptive_conv(g):
    return torch.ops.wrc.adaptive_conv, [_randn(g, 2, 3, 7, 8), _positive(g, 2, 5, 6, 3, 3)]


OPS: dict[str, Callable] = {"block_solve": _block_solve, "lr_spectral_solve": _spectral, "decimate": _decimate,
                            "decimate_adjoint": _decimate_adjoint, "adaptive_conv": _adaptive_conv}


def problem(name: str, device: str, dtype: torch.dtype = torch.float32):
    op, args = OPS[name](torch.Generator().manual_seed(0))
    return op, [a.to(device=device, dtype=dtype) for a in args]


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values with transposed strides in the last two dims (a strided view for 1-D tensors)."""
    if t.ndim == 1:
        return torch.stack([t, t], dim=-1)[..., 0]
    out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not out.is_contiguous() or min(t.shape[-2:]) == 1
    return out


def test_private_backward_ops_pass_opcheck(device):
    """The backward ops that register_autograd calls, checked on their own (schema, fake kernels, dispatch)."""
    g = torch.Generator().manual_seed(0)
    _, block = problem("block_solve", device, torch.float64)
    torch.library.opcheck(torch.ops.wrc._block_solve_backward.default, (torch.randn_like(block[1]), *block))
    _, spectral = problem("lr_spectral_solve", device, torch.float64)
    torch.library.opcheck(torch.ops.wrc._lr_spectral_solve_backward.default, (torch.randn_like(spectral[0]),
                                                                                *spectral))
    x, kernel = problem("decimate", device, torch.float64)[1]
    y = _randn(g, 2, 3, 5, 6).to(device)
    torch.library.opcheck(torch.ops.wrc._decimate_kernel_grad.default, (y, x, kernel, 2))


@pytest.mark.parametrize("name", OPS)
def test_non_contiguous_inputs_and_upstream_gradient(device, name):
    """Strided inputs and a strided upstream gradient give what the contiguous ones give, forward and backward."""
    op, args = problem(name, device)
    leaves = [a.clone().requires_grad_() for a in args]
    out = op(*leaves)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    strided = [non_contiguous(a).requires_grad_() for a in args]
    assert not all(a.is_contiguous() for a in strided)
    out_strided = op(*strided)
    out_strided.backward(non_contiguous(upstream))
    torch.testing.assert_close(out_strided, out, rtol=1e-6, atol=1e-6)
    for a, b in zip(strided, leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", OPS)
def test_runs_on_the_current_stream(device, name):
    """On a side stream held up by a spinning kernel and then an input update, the op (forward and backward) must
    see the update: a kernel launched on the default stream instead would run first and read the old values."""
    if not device.startswith("cuda"):
        pytest.skip("streams are a CUDA notion")
    op, args = problem(name, device)
    fresh = [a * 1.5 if i == 0 else a for i, a in enumerate(args)]  # the first input changes on the side stream
    leaves = [a.clone().requires_grad_() for a in fresh]
    expected = op(*leaves)
    upstream = torch.randn_like(expected)
    expected.backward(upstream)
    inputs = [a.clone().requires_grad_() for a in args]
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # tens of milliseconds of spinning on the side stream
        with torch.no_grad():
            inputs[0].mul_(1.5)
        out = op(*inputs)
        out.backward(upstream)
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    for a, b in zip(inputs, leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)
