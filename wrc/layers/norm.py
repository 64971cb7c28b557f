"""GroupNorm that is as accurate on channels-last activations as on NCHW ones.

PyTorch's channels-last GroupNorm kernel takes each group's variance in one pass, as E[x^2] - E[x]^2: where the
mean is a few spreads from zero it loses digits at any size (1.5e-5 off at 16 x 20 pixels with a mean of 3
spreads, 5e-5 at 448 x 448; its NCHW kernel: 4e-7), enough to move a randomised WRC's outputs by 2e-5. The
guided networks run channels-last, where oneDNN's convolutions are fastest (a 1x1 convolution at 448 x 448 x 32:
1.4 ms channels-last, 37 ms NCHW on a 2-core AMD CPU), so on the CPU their GroupNorm computes its statistics
accurately: for inference in one float64 pass (wrc.ops.moments), otherwise (gradients, compiled or exported
graphs) in two differentiable passes, the group means from per-channel sums (PyTorch's cascade summation: 2e-7),
then the variance of the centred values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.ops.affine import channel_affine_
from wrc.ops.moments import group_affine, group_norm_scale_shift


def channels_last_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                             eps: float) -> torch.Tensor:
    """F.group_norm for a (N, C, H, W) channels-last ``x`` with two-pass statistics; channels-last out.

    Only differentiable PyTorch ops, so it trains, exports and compiles like F.group_norm.
    """
    n, c, h, w = x.shape
    values = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view of channels-last memory
    group_mean = values.mean(1).view(n, groups, -1).mean(-1, keepdim=True)  # N, G, 1
    centred = values - group_mean.expand(n, groups, c // groups).reshape(n, 1, c)
    variance = (centred * centred).mean(1).view(n, groups, -1).mean(-1, keepdim=True)  # N, G, 1
    scale = (variance + eps).rsqrt().expand(n, groups, c // groups).reshape(n, 1, c)
    if weight is not None:
        scale = scale * weight
    out = centred * scale if bias is None else torch.addcmul(bias, centred, scale)
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def group_norm_affine(norm: nn.GroupNorm, channel_mean: torch.Tensor, channel_var: torch.Tensor,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm`` as a per-sample, per-channel affine map x * scale + shift, from each channel's mean and
    (population) variance over the pixels (N, C, float64); scale and shift as (N, C) of ``dtype``."""
    return group_affine(channel_mean, channel_var, norm.num_groups, norm.weight, norm.bias, norm.eps, dtype)


def scale_shift(norm: nn.GroupNorm, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm`` of the channels-last ``values`` (N, P, C) as values * scale + shift ((N, C) each)."""
    return group_norm_scale_shift(values, norm.num_groups, norm.weight, norm.bias, norm.eps)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters, state_dict and NCHW results) with ``channels_last_group_norm`` for
    channels-last CPU inputs, in eager mode and in exported or compiled graphs alike (an exported graph runs
    PyTorch's kernels; ONNX gets the two passes as plain ops). CUDA's kernel is two-pass already."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or x.is_contiguous()
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or x.dtype not in (torch.float32, torch.float64):
            return channels_last_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        # inference: the statistics in one pass (wrc.ops.moments), then one affine pass (no centred copy)
        n, c, h, w = x.shape
        values = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        scale, shift = scale_shift(self, values)
        return torch.addcmul(shift[:, None], values, scale[:, None]).view(n, h, w, c).permute(0, 3, 1, 2)


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """Whether ``x`` is a float32/64 CPU tensor in eager inference (no autograd, tracing, compiling or autocast):
    where the in-place and banded CPU paths of the guided networks are safe."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled("cpu"))


def fuses_in_place(x: torch.Tensor) -> bool:
    """Whether ``group_norm_`` takes its one-pass in-place path for ``x``: eager CPU inference on a channels-last
    map (``eager_cpu_inference``)."""
    return (x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            and eager_cpu_inference(x))


def is_plain_group_norm(module: nn.Module) -> bool:
    """Whether ``module`` computes exactly GroupNorm (nn.GroupNorm or this GroupNorm, forward not overridden, no
    hooks): only then may a caller fold it into an affine map or a fused pass instead of calling it."""
    return (isinstance(module, nn.GroupNorm) and type(module).forward in (nn.GroupNorm.forward, GroupNorm.forward)
            and not module._forward_hooks and not module._forward_pre_hooks)


def group_norm_(norm: nn.GroupNorm, x: torch.Tensor, relu: bool = False, residual: torch.Tensor | None = None,
                residual_norm: nn.GroupNorm | None = None) -> torch.Tensor:
    """[relu](norm(x) [+ residual_norm(residual) | + residual]): a bottleneck's GroupNorm and what follows it.

    ``x`` is consumed: for channels-last CPU inference (``fuses_in_place``) the result overwrites it in one pass
    (statistics in float64, wrc.ops.moments; apply, residual and ReLU at once, wrc.ops.affine), and the
    residual's GroupNorm never exists as a tensor of its own. Otherwise (autograd, export, CUDA, or a norm that
    is not a plain GroupNorm, ``is_plain_group_norm``) the modules run one by one, with the same result up to
    rounding.
    """
    fuses = (fuses_in_place(x) and is_plain_group_norm(norm)
             and (residual is None or (fuses_in_place(residual) and residual.shape == x.shape))
             and (residual_norm is None or is_plain_group_norm(residual_norm)))
    if not fuses:
        out = norm(x)
        if residual is not None:
            out = out + (residual if residual_norm is None else residual_norm(residual))
        return out.relu_() if relu else out
    n, c, h, w = x.shape
    values = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view of channels-last memory
    scale, shift = scale_shift(norm, values)
    residual_values = residual_scale = None
    if residual is not None:
        residual_values = residual.permute(0, 2, 3, 1).reshape(n, h * w, c)
        if residual_norm is not None:
            residual_scale, residual_shift = scale_shift(residual_norm, residual_values)
            shift = shift + residual_shift
    channel_affine_(values, scale, shift, residual_values, residual_scale, relu)
    return x
