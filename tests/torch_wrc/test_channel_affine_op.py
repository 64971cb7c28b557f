"""wrc::channel_affine_ (CPU) against the expression it fuses, computed out of place in float64, and its refusals."""

from __future__ import annotations

import pytest
import torch

torch_wrc = pytest.importorskip("torch_wrc")
pytestmark = pytest.mark.skipif(not torch_wrc.is_available(), reason="torch_wrc not built")


def oracle(x, scale, shift, residual, residual_scale, relu):
    out = x.double() * scale.double()[:, None] + shift.double()[:, None]
    if residual is not None:
        out = out + residual.double() * (1.0 if residual_scale is None else residual_scale.double()[:, None])
    return out.clamp_min(0.0) if relu else out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("residual_kind", [None, "plain", "scaled"])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_the_expression_in_place(dtype, residual_kind, relu):
    torch.manual_seed(0)
    n, p, c = 2, 20000, 7  # several tasks per sample (65,536 values each), an odd channel count
    x = torch.randn(n, p, c, dtype=dtype)
    scale, shift = torch.randn(n, c, dtype=dtype), torch.randn(n, c, dtype=dtype)
    residual = None if residual_kind is None else torch.randn(n, p, c, dtype=dtype).transpose(0, 1).contiguous() \
        .transpose(0, 1)  # any strides: the kernel makes it contiguous
    residual_scale = torch.randn(n, c, dtype=dtype) if residual_kind == "scaled" else None
    expected = oracle(x, scale, shift, residual, residual_scale, relu)
    storage = x.data_ptr()
    torch.ops.wrc.channel_affine_(x, scale, shift, residual, residual_scale, relu)
    assert x.data_ptr() == storage
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(x.double(), expected, rtol=tol, atol=tol)
    if relu:
        assert (x >= 0).all()


def test_refuses_bad_arguments():
    x, s = torch.zeros(2, 4, 3), torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match=r"x must be \(N, P, C\)"):
        torch.ops.wrc.channel_affine_(torch.zeros(4, 3), s, s, None, None, False)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        torch.ops.wrc.channel_affine_(torch.zeros(2, 3, 4).transpose(1, 2), s, s, None, None, False)
    with pytest.raises(RuntimeError, match=r"scale must be \(N, C\) = \(2, 3\)"):
        torch.ops.wrc.channel_affine_(x, torch.zeros(3), s, None, None, False)
    with pytest.raises(RuntimeError, match="shift must have x's dtype"):
        torch.ops.wrc.channel_affine_(x, s, s.double(), None, None, False)
    with pytest.raises(RuntimeError, match="residual must match x"):
        torch.ops.wrc.channel_affine_(x, s, s, torch.zeros(2, 5, 3), None, False)
    with pytest.raises(RuntimeError, match="residual_scale needs a residual"):
        torch.ops.wrc.channel_affine_(x, s, s, None, s, False)
    with pytest.raises(RuntimeError, match="residual must not share memory with x"):
        torch.ops.wrc.channel_affine_(x, s, s, x, None, False)
    base = torch.zeros(1, 51, 3)  # residual one pixel ahead of x in the same memory: a partial overlap
    with pytest.raises(RuntimeError, match="residual must not share memory with x"):
        torch.ops.wrc.channel_affine_(base[:, :50], s[:1], s[:1], base[:, 1:], None, False)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        torch.ops.wrc.channel_affine_(x.half(), s.half(), s.half(), None, None, False)
