"""Per-channel moments of channels-last activations: GroupNorm's statistics without a centred copy, and
GroupNorm itself as a per-channel affine map."""

from __future__ import annotations

import torch

from wrc.ops.extension import extension_enabled


def channel_moments(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance over dim 1 of ``values`` (N, P, C), each (N, C) in float64.

    torch_wrc's kernel takes one float64 pass over the values; the reference (no extension, or inputs that need
    gradients) two passes in the input's dtype, the mean by cascade summation, then the centred squares.
    """
    if values.dim() != 3:
        raise ValueError(f"values must be (N, pixels, channels); got shape {tuple(values.shape)}")
    if (values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64) and values.shape[1] > 0
            and not (torch.is_grad_enabled() and values.requires_grad) and extension_enabled(values.device)):
        return torch.ops.wrc.channel_moments(values)
    mean = values.mean(1, keepdim=True)
    centred = values - mean
    return mean[:, 0].double(), (centred * centred).mean(1).double()


def group_affine(channel_mean: torch.Tensor, channel_var: torch.Tensor, groups: int, weight: torch.Tensor | None,
                 bias: torch.Tensor | None, eps: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm as x * scale + shift per sample and channel, from each channel's mean and population variance
    over the pixels ((N, C), float64): the groups pool their channels' statistics; scale, shift (N, C) of ``dtype``."""
    b, k = channel_mean.shape
    mean = channel_mean.view(b, groups, -1)
    group_mean = mean.mean(-1, keepdim=True)
    group_var = (channel_var.view(b, groups, -1) + (mean - group_mean).square()).mean(-1, keepdim=True)
    scale = (group_var + eps).rsqrt().expand(b, groups, k // groups).reshape(b, k)
    shift = -group_mean.expand(b, groups, k // groups).reshape(b, k) * scale
    if weight is not None:
        scale, shift = scale * weight.double(), shift * weight.double()
    if bias is not None:
        shift = shift + bias.double()
    return scale.to(dtype), shift.to(dtype)


def group_norm_scale_shift(values: torch.Tensor, groups: int, weight: torch.Tensor | None,
                           bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm of ``values`` (N, P, C) as values * scale + shift, scale and shift (N, C) in values' dtype.

    torch_wrc's kernel does the moments and the group statistics in one call (inference: no gradients reach
    weight or bias); otherwise ``channel_moments`` then ``group_affine``.
    """
    params_need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (weight, bias))
    if (values.dim() == 3 and values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64)
            and values.shape[1] > 0 and not params_need_grad and not (torch.is_grad_enabled() and values.requires_grad)
            and extension_enabled(values.device) and hasattr(torch.ops.wrc, "group_norm_scale_shift")):
        return torch.ops.wrc.group_norm_scale_shift(values, groups, weight, bias, eps)
    return group_affine(*channel_moments(values), groups, weight, bias, eps, values.dtype)
