"""wrc::channel_moments (CPU) against the float64 definition, and its refusals."""

from __future__ import annotations

import pytest
import torch

torch_wrc = pytest.importorskip("torch_wrc")
pytestmark = pytest.mark.skipif(not torch_wrc.is_available(), reason="torch_wrc not built")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_definition_far_from_zero_mean(dtype):
    torch.manual_seed(0)
    x = (torch.randn(2, 3000, 7, dtype=torch.float64) * 0.01 + 5.0).to(dtype)  # mean 500 spreads from zero
    mean, var = torch.ops.wrc.channel_moments(x)
    exact = x.double()
    assert mean.dtype == var.dtype == torch.float64 and mean.shape == (2, 7)
    torch.testing.assert_close(mean, exact.mean(1), rtol=1e-13, atol=0)
    torch.testing.assert_close(var, exact.var(1, unbiased=False), rtol=1e-9, atol=0)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)  # the kernel takes any strides
    torch.testing.assert_close(torch.ops.wrc.channel_moments(strided)[1], var, rtol=1e-12, atol=0)


def test_refuses_bad_shapes_and_dtypes():
    with pytest.raises(RuntimeError, match=r"x must be \(N, P, C\)"):
        torch.ops.wrc.channel_moments(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="float32 and float64"):
        torch.ops.wrc.channel_moments(torch.zeros(1, 2, 3, dtype=torch.float16))
