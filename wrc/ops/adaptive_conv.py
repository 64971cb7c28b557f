"""Adaptive convolution: a different k x k filter at every output pixel, shared by all channels.

    out[b, c, y, x] = sum_{i, j < k} filters[b, y, x, i, j] * input[b, c, y + i, x + j]

a "valid" correlation (the filter is not flipped): pad the input by k // 2 first for a same-size
output. It is the core of FeatUp's joint bilateral upsampler. ``adaptive_conv_reference`` is the
pure-PyTorch definition (unfold: it materialises k^2 copies of the input, which autograd keeps); the
fused torch_wrc kernels (CPU and CUDA) never build that copy and give exact gradients for every tap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrc.ops.extension import extension_enabled

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_adaptive_conv(input: torch.Tensor, filters: torch.Tensor) -> int:
    """Validate shapes and dtypes; returns k."""
    if filters.ndim != 5 or filters.shape[-1] != filters.shape[-2]:
        raise ValueError(f"filters must be (B, H, W, k, k); got shape {tuple(filters.shape)}")
    b, h, w, k, _ = filters.shape
    expected = (b, h + k - 1, w + k - 1)
    if input.ndim != 4 or (input.shape[0], *input.shape[-2:]) != expected:
        raise ValueError(f"input must be (B, C, H + k - 1, W + k - 1) = ({b}, C, {h + k - 1}, {w + k - 1}) for "
                         f"filters of shape {tuple(filters.shape)} (pad the input by k // 2 first); "
                         f"got {tuple(input.shape)}")
    if input.dtype != filters.dtype or input.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"input and filters must share one dtype of {SUPPORTED_DTYPES}; "
                         f"got {input.dtype} and {filters.dtype}")
    return k


def adaptive_conv(input: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Adaptive convolution through the fused torch_wrc kernels when available, else the reference.

    Args:
        input: (B, C, H + k - 1, W + k - 1), already padded.
        filters: (B, H, W, k, k), one filter per output pixel.
    """
    check_adaptive_conv(input, filters)
    if extension_enabled(input.device):
        return torch.ops.wrc.adaptive_conv(input.contiguous(), filters.contiguous())
    return adaptive_conv_reference(input, filters)


def adaptive_conv_reference(input: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The definition, by unfold: (B, C k^2, H W) patches weighted by the filters and summed over taps."""
    k = check_adaptive_conv(input, filters)
    b, c = input.shape[:2]
    h, w = filters.shape[1:3]
    patches = F.unfold(input, kernel_size=k).view(b, c, k * k, h, w)
    weights = filters.reshape(b, h, w, k * k).permute(0, 3, 1, 2)  # B, k^2, H, W
    return (patches * weights[:, None]).sum(dim=2)
