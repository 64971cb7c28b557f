"""Channels-last GroupNorm (wrc.layers.norm) against GroupNorm's definition computed term by term in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wrc.layers.norm import GroupNorm, channels_last_group_norm

CL = torch.channels_last


def group_norm_oracle(x: torch.Tensor, groups: int, weight, bias, eps: float = 1e-5) -> torch.Tensor:
    """(x - group mean) / sqrt(group population variance + eps) * weight + bias, in float64, NCHW."""
    n, c = x.shape[:2]
    g = x.double().reshape(n, groups, -1)
    normed = ((g - g.mean(-1, keepdim=True)) / (g.var(-1, unbiased=False, keepdim=True) + eps).sqrt()).view(x.shape)
    if weight is not None:
        normed = normed * weight.double().view(1, c, 1, 1)
    if bias is not None:
        normed = normed + bias.double().view(1, c, 1, 1)
    return normed


def data(shape, offset: float = 3.0) -> torch.Tensor:
    """Channels-last values far from zero mean (offset in units of the spread): a one-pass variance loses digits."""
    torch.manual_seed(0)
    return (torch.randn(shape) * 0.5 + offset).contiguous(memory_format=CL)


@pytest.mark.parametrize("affine", [True, False])
def test_matches_the_definition_at_float32_rounding(affine):
    x = data((2, 8, 96, 80))  # batch 2 (per-sample statistics), 4 groups of 2 channels
    weight = torch.rand(8) + 0.5 if affine else None
    bias = torch.randn(8) if affine else None
    out = channels_last_group_norm(x, 4, weight, bias, 1e-5)
    assert out.is_contiguous(memory_format=CL)
    # float32 inputs, float64 oracle: within a few ulps of the output's scale (~4)
    assert (out.double() - group_norm_oracle(x, 4, weight, bias)).abs().max() < 2e-6


def test_float64_is_exact_and_gradcheck():
    x = data((2, 4, 5, 6)).double()
    weight, bias = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(channels_last_group_norm(x, 2, weight, bias, 1e-5),
                               group_norm_oracle(x, 2, weight, bias), rtol=1e-12, atol=1e-12)
    args = tuple(t.clone().requires_grad_(True) for t in (x, weight, bias))
    assert torch.autograd.gradcheck(lambda a, w, b: channels_last_group_norm(a, 2, w, b, 1e-5), args)


def test_module_routes_by_layout_with_nn_groupnorm_state():
    norm = GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    assert list(norm.state_dict()) == list(torch.nn.GroupNorm(4, 8).state_dict())
    for size in ((16, 20), (72, 64)):  # PyTorch's channels-last kernel: 1e-5 off at either size (one-pass variance)
        x = data((2, 8, *size))
        oracle = group_norm_oracle(x, 4, norm.weight, norm.bias)
        with torch.no_grad():
            out = norm(x)
            assert out.is_contiguous(memory_format=CL)
            assert (out.double() - oracle).abs().max() < 2e-6
            nchw = x.contiguous()  # NCHW: PyTorch's kernel, bit for bit
            assert torch.equal(norm(nchw), F.group_norm(nchw, 4, norm.weight, norm.bias))


def test_channel_moments_kernel_and_reference_agree_and_refuse_other_shapes():
    from wrc.ops.extension import reference_only
    from wrc.ops.moments import channel_moments

    values = data((2, 6, 9, 11)).permute(0, 2, 3, 1).reshape(2, 99, 6)
    with torch.no_grad():
        fast = channel_moments(values)
        with reference_only():
            reference = channel_moments(values)
    exact = values.double()
    for got in (fast, reference):
        assert got[0].dtype == got[1].dtype == torch.float64
        torch.testing.assert_close(got[0], exact.mean(1), rtol=1e-6, atol=0)
        torch.testing.assert_close(got[1], exact.var(1, unbiased=False), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match=r"values must be \(N, pixels, channels\); got shape \(6, 99\)"):
        channel_moments(values[0].t())
