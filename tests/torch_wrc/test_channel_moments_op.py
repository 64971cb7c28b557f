"""wrc::channel_moments (CPU) against the float64 definition, and its refusals."""

from __future__ import annotations

import pytest
import torch

torch_wrc = pytest.importorskip("torch_wrc")
pytestmark = pytest.mark.skipif(not torch_wrc.is_available(), reason="torch_wrc not built")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# channels: the remainder loop only, two 16-channel register groups, groups and a remainder, the widest map
@pytest.mark.parametrize("channels", [7, 32, 40, 416])
def test_matches_float64_definition_far_from_zero_mean(dtype, channels):
    torch.manual_seed(0)
    # 3000 pixels: several partial-sum blocks per sample at every width (at most 1024 pixels, fewer when wide)
    x = (torch.randn(2, 3000, channels, dtype=torch.float64) * 0.01 + 5.0).to(dtype)  # mean 500 spreads from 0
    mean, var = torch.ops.wrc.channel_moments(x)
    exact = x.double()
    assert mean.dtype == var.dtype == torch.float64 and mean.shape == (2, channels)
    torch.testing.assert_close(mean, exact.mean(1), rtol=1e-13, atol=0)
    # the kernel sums values shifted by one pixel of the sample: no cancellation however far the mean is from zero
    torch.testing.assert_close(var, exact.var(1, unbiased=False), rtol=1e-11, atol=0)
    far = x.double() + 1e4  # now 10^6 spreads from zero: E[x^2] - E[x]^2 unshifted would keep ~4 digits
    torch.testing.assert_close(torch.ops.wrc.channel_moments(far)[1], far.var(1, unbiased=False), rtol=1e-8, atol=0)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # the kernel takes any strides
    torch.testing.assert_close(torch.ops.wrc.channel_moments(strided)[1], var, rtol=1e-12, atol=0)


def test_refuses_bad_shapes_and_dtypes():
    with pytest.raises(RuntimeError, match=r"x must be \(N, P, C\)"):
        torch.ops.wrc.channel_moments(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="float32 and float64"):
        torch.ops.wrc.channel_moments(torch.zeros(1, 2, 3, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_scale_shift_is_group_norm(dtype, affine):
    """x * scale + shift equals F.group_norm (the oracle, on the NCHW float64 copy) for every sample and group."""
    torch.manual_seed(0)
    n, p, c, groups = 2, 300, 12, 4
    x = (torch.randn(n, p, c, dtype=torch.float64) * 0.5 + 2.0).to(dtype)
    weight, bias = (torch.randn(c), torch.randn(c)) if affine else (None, None)
    scale, shift = torch.ops.wrc.group_norm_scale_shift(x, groups, weight, bias, 1e-5)
    assert scale.dtype == shift.dtype == dtype and scale.shape == shift.shape == (n, c)
    out = x.double() * scale.double()[:, None] + shift.double()[:, None]
    nchw = x.double().transpose(1, 2)[..., None]  # N, C, P, 1
    expected = torch.nn.functional.group_norm(nchw, groups, None if weight is None else weight.double(),
                                              None if bias is None else bias.double(), 1e-5)[..., 0].transpose(1, 2)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


def test_group_norm_scale_shift_refusals():
    with pytest.raises(RuntimeError, match="groups must divide C = 6"):
        torch.ops.wrc.group_norm_scale_shift(torch.zeros(1, 4, 6), 4, None, None, 1e-5)
    with pytest.raises(RuntimeError, match=r"weight and bias must be \(C,\) = \(6,\)"):
        torch.ops.wrc.group_norm_scale_shift(torch.zeros(1, 4, 6), 3, torch.ones(5), None, 1e-5)
