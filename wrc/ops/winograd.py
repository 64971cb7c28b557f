"""3x3 convolutions by Winograd's F(2x2, 3x3) for CPU inference: 2.25x fewer multiplications than direct ones.

PyTorch's CPU convolution (oneDNN's direct algorithm) of the guided networks' wide 3x3 layers (208-416 channels)
already runs near the CPU's peak: only fewer multiplications make those layers faster. torch_wrc's kernel
transforms 2x2 output tiles and their 4x4 input patches, and leaves the 16 products per tile to the BLAS, a block
of tiles at a time (measured on a 2-core Intel Xeon: 0.55-0.75x the time of oneDNN's convolution). Its float32
results differ from direct convolution's by a few times float32 rounding (tested against float64 direct
convolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrc.ops.extension import extension_enabled


def winograd_serves(x: torch.Tensor) -> bool:
    """Whether torch_wrc's Winograd kernel can take ``x``: float32/64 on the CPU with the extension built, and no
    gradient wanted (the kernel has no backward)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not torch.is_grad_enabled()
            and extension_enabled(x.device) and hasattr(torch.ops.wrc, "winograd_conv3x3"))


def winograd_weights(weight: torch.Tensor) -> torch.Tensor:
    """The kernels (C_out, C_in, 3, 3) as the 16 matrices (16, C_out, C_in) that F(2x2, 3x3) multiplies the tiles
    with (G g G^T per kernel): computed once, they serve every call of ``winograd_conv3x3`` with these weights."""
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"weight must be (C_out, C_in, 3, 3); got {tuple(weight.shape)}")
    return torch.ops.wrc.winograd_weights(weight)


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     transformed_weight: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 ``weight`` (C_out, C_in, 3, 3), channels-last out.

    By Winograd's F(2x2, 3x3) where ``winograd_serves(x)`` (``transformed_weight``: ``winograd_weights(weight)``
    if the caller keeps it, else computed here), else by F.conv2d (the reference, differentiable).
    """
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1:] != (x.shape[1], 3, 3):
        raise ValueError(f"need x (N, C_in, H, W) and weight (C_out, C_in, 3, 3); got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be (C_out,) = ({weight.shape[0]},); got {tuple(bias.shape)}")
    if winograd_serves(x):
        return torch.ops.wrc.winograd_conv3x3(x, weight, bias, transformed_weight)
    return F.conv2d(x, weight, bias, padding=1).contiguous(memory_format=torch.channels_last)
