"""3x3 convolutions by Winograd's F(2x2, 3x3) and F(4x4, 3x3) for CPU inference: 2.25x and 4x fewer
multiplications than direct ones.

PyTorch's CPU convolution (oneDNN's direct algorithm) of the guided networks' wide 3x3 layers (208-416 channels)
already runs near the CPU's peak: only fewer multiplications make those layers faster. torch_wrc's kernel
transforms m x m output tiles and their (m + 2) x (m + 2) input patches, and leaves the (m + 2)^2 products per tile
to the BLAS, a block of tiles at a time. Its float32 results differ from direct convolution's by a few times float32
rounding (tested against float64 direct convolution; F(4x4) 1.3-2x direct convolution's error at 96-416 channels,
up to 3.5x at 17; F(2x2) less).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrc.ops.extension import extension_enabled

# F(4x4, 3x3) from this many 4x4 tiles on (one 45 x 45 map and up): its kernels, transformed on every call, are 36
# matrices (C_out, C_in) against F(2x2)'s 16 (and the BLAS repacks them), which only enough tiles pay back. Measured
# on a 2-core AMD EPYC, median time of F(4x4) over F(2x2), interleaved: 64 x 64 maps of 240 channels 0.80-0.86,
# 48 x 48 (144 tiles) 0.82, 32 x 32 (64 tiles) of 208-416 channels 0.97-1.11, 16 x 16 1.6-1.8.
FOUR_BY_FOUR_MIN_TILES = 128


def winograd_serves(x: torch.Tensor) -> bool:
    """Whether torch_wrc's Winograd kernel can take ``x``: float32/64 on the CPU with the extension built, and no
    gradient wanted (the kernel has no backward)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not torch.is_grad_enabled()
            and extension_enabled(x.device) and hasattr(torch.ops.wrc, "winograd_conv3x3"))


def winograd_tile(x: torch.Tensor) -> int:
    """The output tile (2 or 4) of the faster algorithm for ``x`` (N, C, H, W): F(4x4, 3x3) for maps of at least
    FOUR_BY_FOUR_MIN_TILES 4x4 tiles in all, else F(2x2, 3x3)."""
    n, _, h, w = x.shape
    return 4 if n * -(-h // 4) * -(-w // 4) >= FOUR_BY_FOUR_MIN_TILES else 2


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     tile: int | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 ``weight`` (C_out, C_in, 3, 3), channels-last out.

    By Winograd's F(tile x tile, 3x3) (``tile`` 2 or 4; None: ``winograd_tile(x)``) where ``winograd_serves(x)``,
    else by F.conv2d (the reference, differentiable).
    """
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1:] != (x.shape[1], 3, 3):
        raise ValueError(f"need x (N, C_in, H, W) and weight (C_out, C_in, 3, 3); got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be (C_out,) = ({weight.shape[0]},); got {tuple(bias.shape)}")
    if tile not in (None, 2, 4):
        raise ValueError(f"tile must be 2 (F(2x2, 3x3)), 4 (F(4x4, 3x3)) or None (chosen by size); got {tile!r}")
    if winograd_serves(x):
        return torch.ops.wrc.winograd_conv3x3(x, weight, bias, winograd_tile(x) if tile is None else tile)
    return F.conv2d(x, weight, bias, padding=1).contiguous(memory_format=torch.channels_last)
