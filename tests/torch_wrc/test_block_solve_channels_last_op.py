"""wrc::block_solve_channels_last (CPU inference kernel) against each s x s block's normal equations solved
densely (the oracle), with maps shared by all channels or one per channel; its checks and refusals; and the
routing of wrc.ops.reverse_conv to it (channels-last, no gradients) and away from it (gradients)."""

from __future__ import annotations

import itertools

import pytest
import torch

from wrc.ops.reverse_conv import block_solve_conv, weighted_reverse_conv

torch_wrc = pytest.importorskip("torch_wrc")
pytestmark = pytest.mark.skipif(not torch_wrc.is_available(), reason="torch_wrc not built")

CL = torch.channels_last


def block_oracle(y, z, kernel, w_low, w_high):
    """argmin_x wL (y - kappa . x_B)^2 + sum_t wH_t (x_t - z_t)^2 for every token block B, by torch.linalg.solve
    of (wL kappa kappa^T + diag(wH)) x_B = wL kappa y + wH z_B in float64."""
    b, c, h, w = y.shape
    s = kernel.shape[-1]
    w_low, w_high = w_low.expand(b, c, h, w).double(), w_high.expand(b, c, h * s, w * s).double()
    out = torch.empty(z.shape, dtype=torch.float64)
    for n, ch, i, j in itertools.product(range(b), range(c), range(h), range(w)):
        kappa = kernel[ch].double().flatten()
        rows, cols = slice(i * s, i * s + s), slice(j * s, j * s + s)
        d, wl = w_high[n, ch, rows, cols].flatten(), w_low[n, ch, i, j]
        z_block = z[n, ch, rows, cols].double().flatten()
        system = wl * torch.outer(kappa, kappa) + torch.diag(d)
        rhs = wl * kappa * y[n, ch, i, j].double() + d * z_block
        out[n, ch, rows, cols] = torch.linalg.solve(system, rhs).view(s, s)
    return out


def problem(scale, channels, low_maps, high_maps, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, h, w = 2, 3, 4
    y = torch.randn(b, channels, h, w, generator=g, dtype=dtype)
    z = torch.randn(b, channels, h * scale, w * scale, generator=g, dtype=dtype)
    kernel = torch.rand(channels, scale, scale, generator=g, dtype=dtype) + 0.1
    kernel = kernel / kernel.sum((1, 2), keepdim=True)
    w_low = torch.rand(b, low_maps, h, w, generator=g, dtype=dtype) * 3
    w_low[0, 0, 0, 0] = 0.0  # a token with no say: x = z on its block
    w_high = torch.rand(b, high_maps, h * scale, w * scale, generator=g, dtype=dtype) + 0.05
    return tuple(t.contiguous(memory_format=CL) for t in (y, z)) + (kernel,) + tuple(
        t.contiguous(memory_format=CL) for t in (w_low, w_high))


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("channels", [1, 5, 37])  # one, fewer than a vector, several vectors and a remainder
@pytest.mark.parametrize("shared", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_equals_each_blocks_dense_solve(scale, channels, shared, dtype, tol):
    low_maps, high_maps = (1 if flag else channels for flag in shared)
    y, z, kernel, w_low, w_high = problem(scale, channels, low_maps, high_maps, dtype)
    x = torch.ops.wrc.block_solve_channels_last(y, z, kernel, w_low, w_high)
    expected = block_oracle(y, z, kernel, w_low, w_high)
    assert x.shape == z.shape and x.dtype == dtype and x.is_contiguous(memory_format=CL)
    assert (x.double() - expected).abs().max() <= tol * expected.abs().max()
    kept = slice(None) if low_maps == 1 else slice(0, 1)  # w_low[0, 0, 0, 0] = 0: that block keeps the prior
    assert torch.equal(x[0, kept, :scale, :scale], z[0, kept, :scale, :scale])


def test_refusals_name_the_argument():
    y, z, kernel, w_low, w_high = problem(2, 4, 1, 4, torch.float32)
    op = torch.ops.wrc.block_solve_channels_last
    with pytest.raises(RuntimeError, match="y and z must be channels-last"):
        op(y.contiguous(), z.contiguous(), kernel, w_low, w_high)
    with pytest.raises(RuntimeError, match=r"w_low must be \(B, 1 or C, H, W\) = \(2, 1 or 4, 3, 4\)"):
        op(y, z, kernel, w_low[..., :3], w_high)
    with pytest.raises(RuntimeError, match=r"z must be \(B, C, s h, s w\)"):
        op(y, z[..., :7], kernel, w_low, w_high)
    with pytest.raises(RuntimeError, match="w_high must be channels-last"):
        op(y, z, kernel, w_low, w_high.contiguous())
    with pytest.raises(RuntimeError, match="w_high must have y's dtype"):
        op(y, z, kernel, w_low, w_high.double())


@pytest.mark.parametrize("which", ["low", "high"])
@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_out_of_range_weights_are_refused_in_the_same_pass(which, bad):
    y, z, kernel, w_low, w_high = problem(2, 4, 1, 4, torch.float32)
    (w_low if which == "low" else w_high)[1, 0, 2, 3] = bad
    if which == "high":
        w_high[1, 0, 0, 0] = 0.0  # zero is refused for w_high (it keeps the system invertible), allowed for w_low
    with pytest.raises(ValueError, match=f"w_{which} must be"):
        torch.ops.wrc.block_solve_channels_last(y, z, kernel, w_low, w_high)
    with pytest.raises(ValueError, match=f"w_{which} must be"), torch.no_grad():  # through the public solve
        weighted_reverse_conv(y, z, kernel, 2, w_low, w_high)


def test_thin_maps_one_token_row_or_column():
    for size in ((1, 4), (3, 1), (1, 1)):
        g = torch.Generator().manual_seed(3)
        y = torch.randn(2, 18, *size, generator=g, dtype=torch.float64).contiguous(memory_format=CL)
        z = torch.randn(2, 18, 2 * size[0], 2 * size[1], generator=g, dtype=torch.float64).contiguous(memory_format=CL)
        kernel = torch.rand(18, 2, 2, generator=g, dtype=torch.float64) + 0.1
        w_low = (torch.rand(2, 18, *size, generator=g, dtype=torch.float64) * 2).contiguous(memory_format=CL)
        w_high = (torch.rand(2, 1, *z.shape[-2:], generator=g, dtype=torch.float64) + 0.1).contiguous(memory_format=CL)
        x = torch.ops.wrc.block_solve_channels_last(y, z, kernel, w_low, w_high)
        torch.testing.assert_close(x, block_oracle(y, z, kernel, w_low, w_high), rtol=1e-12, atol=1e-12)


def test_no_backward():
    y, z, kernel, w_low, w_high = problem(2, 4, 1, 4, torch.float64)
    x = torch.ops.wrc.block_solve_channels_last(y.requires_grad_(), z, kernel, w_low, w_high)
    with pytest.raises(RuntimeError, match="inference kernel without a backward"):
        x.sum().backward()


def spy_on_kernel(monkeypatch) -> list[int]:
    """Counts the calls of torch.ops.wrc.block_solve_channels_last from here on."""
    calls, op = [], torch.ops.wrc.block_solve_channels_last

    def counted(*args):
        calls.append(1)
        return op(*args)

    monkeypatch.setattr(torch.ops.wrc, "block_solve_channels_last", counted)
    return calls


def test_public_solve_routes_inference_here_and_gradients_to_the_differentiable_solve(monkeypatch):
    y, z, kernel, w_low, w_high = problem(2, 6, 1, 6, torch.float64)
    expected = block_oracle(y, z, kernel, w_low, w_high)
    calls = spy_on_kernel(monkeypatch)
    with torch.no_grad():
        fast = weighted_reverse_conv(y, z, kernel, 2, w_low, w_high)
        assert len(calls) == 1
        weighted_reverse_conv(y.contiguous(), z.contiguous(), kernel, 2, w_low, w_high)  # NCHW: not the kernel
        assert len(calls) == 1
        batch_shared = weighted_reverse_conv(y, z, kernel, 2, w_low[:1], w_high[:1])  # maps broadcast over batch
        assert len(calls) == 2
    torch.testing.assert_close(batch_shared, block_oracle(y, z, kernel, w_low[:1], w_high[:1]), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)
    y = y.clone().requires_grad_()
    slow = weighted_reverse_conv(y, z, kernel, 2, w_low, w_high)  # autograd: block_solve_conv
    assert len(calls) == 2
    torch.testing.assert_close(slow, expected, rtol=1e-12, atol=1e-12)
    slow.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
    with torch.no_grad():
        torch.testing.assert_close(block_solve_conv(y, z, kernel, w_low, w_high), expected, rtol=1e-12, atol=1e-12)
