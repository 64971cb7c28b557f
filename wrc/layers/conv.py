"""Faster convolutions for the guided networks' CPU inference, each the same as its nn.Conv2d up to rounding:
3x3 layers by Winograd's algorithm (wrc.ops.winograd), and oneDNN's convolution with an in-place sum into an
existing map as a post-op."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.norm import eager_cpu_inference
from wrc.ops.winograd import winograd_conv3x3, winograd_serves

# Narrower layers stay with oneDNN: below this width the 16 products per tile are too small for the BLAS to beat
# direct convolution (measured on a 2-core Intel Xeon with AVX-512: 32 channels 1.1-1.4x slower, 208 channels 1.7x
# faster).
WINOGRAD_MIN_CHANNELS = 64


def is_plain_conv(module: nn.Module) -> bool:
    """Whether ``module`` computes exactly nn.Conv2d (not a subclass, no hooks): only then may a caller replace
    its call by another kernel (as wrc.layers.norm.is_plain_group_norm for GroupNorm)."""
    return type(module) is nn.Conv2d and not module._forward_hooks and not module._forward_pre_hooks


def takes_winograd(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``conv(x)`` may run as ``winograd_conv3x3``: a plain nn.Conv2d (no hooks, no subclass) 3x3, stride
    1, zero padding 1, one group, at least WINOGRAD_MIN_CHANNELS wide on both sides, with x's dtype, and a
    channels-last ``x`` in eager CPU inference."""
    return (is_plain_conv(conv) and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and conv.weight.dtype == x.dtype
            and min(conv.in_channels, conv.out_channels) >= WINOGRAD_MIN_CHANNELS
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and eager_cpu_inference(x) and winograd_serves(x))


def conv3x3(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, by Winograd's F(2x2, 3x3) or F(4x4, 3x3) (by size) where ``takes_winograd``: the same up to
    rounding."""
    if takes_winograd(conv, x):
        # the kernels transformed on every call (a kept copy could not see in-place changes through .data)
        return winograd_conv3x3(x, conv.weight, conv.bias)
    return conv(x)


FUSED_CONVOLUTIONS = True  # conv_add_ uses oneDNN's fused op where it can


def oneDNN_pointwise() -> bool:
    """Whether oneDNN's fused convolution ops (the ones torch.compile's CPU backend emits) are available."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def conv_add_(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              stride: int = 1, padding: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``out += F.conv2d(x, weight, bias, stride, padding)`` in place (no gradient), ``out`` returned: for float32
    channels-last maps oneDNN adds the convolution into ``out`` as it computes it (its "add" post-op), so the
    convolution's result is never a tensor of its own (into a zero-filled ``out``: a band of rows of a map)."""
    cl = torch.channels_last
    if (x.dtype == torch.float32 and out.dtype == torch.float32 and FUSED_CONVOLUTIONS and oneDNN_pointwise()
            and x.is_contiguous(memory_format=cl) and out.is_contiguous(memory_format=cl)):
        torch.ops.mkldnn._convolution_pointwise_.binary(out, x, weight, bias, list(padding), [stride, stride],
                                                        [1, 1], 1, "add", None, None, [], None)
        return out
    return out.add_(F.conv2d(x, weight, bias, stride=stride, padding=padding))
