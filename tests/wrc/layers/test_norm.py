"""Channels-last GroupNorm (wrc.layers.norm) against GroupNorm's definition computed term by term in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wrc.layers.norm import GroupNorm, channels_last_group_norm, fuses_in_place, group_norm_

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


def randomised_norm(groups: int, channels: int, dtype=torch.float64) -> GroupNorm:
    norm = GroupNorm(groups, channels).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    return norm


@pytest.mark.parametrize("residual_kind", [None, "plain", "normalised"])
@pytest.mark.parametrize("relu", [False, True])
def test_group_norm_in_place_equals_the_definition_float64(residual_kind, relu):
    norm, residual_norm = randomised_norm(4, 8), randomised_norm(2, 8)
    x = data((2, 8, 9, 11)).double()
    residual = None if residual_kind is None else data((2, 8, 9, 11), offset=-1.0).double()
    expected = group_norm_oracle(x, 4, norm.weight, norm.bias)
    if residual_kind == "plain":
        expected = expected + residual
    elif residual_kind == "normalised":
        expected = expected + group_norm_oracle(residual, 2, residual_norm.weight, residual_norm.bias)
    if relu:
        expected = expected.clamp_min(0.0)
    with torch.no_grad():
        storage = x.data_ptr()
        out = group_norm_(norm, x, relu=relu, residual=residual,
                          residual_norm=residual_norm if residual_kind == "normalised" else None)
    assert out.data_ptr() == storage and out.is_contiguous(memory_format=CL)  # in place, layout kept
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_group_norm_in_place_only_where_it_is_safe():
    norm = randomised_norm(2, 4)
    x = data((1, 4, 5, 6)).double()
    expected = group_norm_oracle(x, 2, norm.weight, norm.bias).clamp_min(0.0)
    assert fuses_in_place(x) is False  # gradients are on
    out = group_norm_(norm, x.clone(), relu=True)  # autograd path: the module, then relu
    assert out.grad_fn is not None
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        assert fuses_in_place(x) and not fuses_in_place(x.contiguous()) and not fuses_in_place(x.half())
        nchw = x.contiguous()
        torch.testing.assert_close(group_norm_(norm, nchw, relu=True), expected, rtol=1e-12, atol=1e-12)


def test_group_norm_in_place_calls_a_norm_it_cannot_fold():
    """A norm replaced by the identity (or a GroupNorm with its own forward) runs as a module: never folded."""

    class Doubling(torch.nn.GroupNorm):
        def forward(self, x):
            return 2 * x

    x, residual = data((1, 4, 5, 6)).double(), data((1, 4, 5, 6), offset=-1.0).double()
    with torch.no_grad():
        torch.testing.assert_close(group_norm_(torch.nn.Identity(), x.clone(), relu=True), x.relu())
        torch.testing.assert_close(group_norm_(Doubling(2, 4).double(), x.clone()), 2 * x)
        out = group_norm_(torch.nn.Identity(), x.clone(), residual=residual, residual_norm=torch.nn.Identity())
        torch.testing.assert_close(out, x + residual)


def test_channel_affine_reference_and_kernel_agree_and_refuse_bad_arguments():
    from wrc.ops.affine import channel_affine_
    from wrc.ops.extension import reference_only

    torch.manual_seed(0)
    values, residual = torch.randn(2, 50, 3), torch.randn(2, 50, 3)
    scale, shift, residual_scale = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    expected = (values * scale[:, None] + shift[:, None] + residual * residual_scale[:, None]).relu()
    with torch.no_grad():
        fast = channel_affine_(values.clone(), scale, shift, residual, residual_scale, relu=True)
        with reference_only():
            reference = channel_affine_(values.clone(), scale, shift, residual, residual_scale, relu=True)
        torch.testing.assert_close(fast, expected)
        torch.testing.assert_close(reference, expected)
        with pytest.raises(ValueError, match=r"shift must be \(N, C\) = \(2, 3\) of dtype torch.float32"):
            channel_affine_(values, scale, shift[0])
        with pytest.raises(ValueError, match="residual_scale needs a residual"):
            channel_affine_(values, scale, shift, residual_scale=residual_scale)
        with pytest.raises(ValueError, match="residual must match values"):
            channel_affine_(values, scale, shift, residual[:, :10])
        with pytest.raises(ValueError, match="values must be contiguous"):
            channel_affine_(values.transpose(0, 1), scale, shift)
    with pytest.raises(RuntimeError, match="torch.no_grad"):
        channel_affine_(values, scale.requires_grad_(), shift)


def test_scale_shift_kernel_and_reference_agree():
    """wrc.layers.norm.scale_shift: torch_wrc's one-call kernel and the PyTorch route (channel_moments, then
    group_affine) give the same map; with gradients on the parameters the PyTorch route keeps them."""
    from wrc.layers.norm import scale_shift
    from wrc.ops.extension import reference_only

    norm = randomised_norm(4, 8).double()
    values = data((2, 8, 5, 6)).double().permute(0, 2, 3, 1).reshape(2, 30, 8)
    with torch.no_grad():
        fast = scale_shift(norm, values)
        with reference_only():
            reference = scale_shift(norm, values)
    for a, b in zip(fast, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    scale, shift = scale_shift(norm, values)  # autograd on: differentiable in weight and bias
    (scale.sum() + shift.sum()).backward()
    assert norm.weight.grad is not None and norm.bias.grad is not None
