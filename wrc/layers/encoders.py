"""The GN-SiLU convolution blocks and guidance encoders of the attention upsamplers (JAFAR, AnyUp, NAF).

Two variants that differ in ways that change parameter counts and outputs (shared/reference/modern_peers.md
sections 1.1, 4.1, 9.1), so they are flags of one block rather than look-alike classes:
- JAFAR / AnyUp ``ResBlock``: x + conv(SiLU(GN8(conv(SiLU(GN8(x)))))), convolutions without bias;
- NAF ``EncBlock``: GN8, SiLU, conv, GN8, SiLU, conv, convolutions with bias, no residual.
Both use reflect padding for k > 1 and 8-group GroupNorm with affine parameters.
"""

from __future__ import annotations

import torch
from torch import nn

GROUPS = 8


def conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> nn.Conv2d:
    """A k x k convolution keeping the size, reflect-padded (k = 1: no padding)."""
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd; got {kernel_size}")
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias,
                     padding_mode="reflect" if kernel_size > 1 else "zeros")


class GNSiLUBlock(nn.Module):
    """Two (GN8, SiLU, conv_k) stages; ``residual`` adds the input (JAFAR/AnyUp), else none (NAF)."""

    def __init__(self, channels: int, kernel_size: int = 1, *, residual: bool = True, bias: bool = False) -> None:
        super().__init__()
        if channels % GROUPS:
            raise ValueError(f"channels={channels} must be a multiple of {GROUPS} (GroupNorm with {GROUPS} groups)")
        self.residual = residual
        self.body = nn.Sequential(
            nn.GroupNorm(GROUPS, channels), nn.SiLU(), conv(channels, channels, kernel_size, bias),
            nn.GroupNorm(GROUPS, channels), nn.SiLU(), conv(channels, channels, kernel_size, bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class ConvEncoder(nn.Sequential):
    """A stem convolution from ``in_channels`` to ``channels``, then ``blocks`` GN-SiLU blocks: JAFAR's and AnyUp's
    ``encoder(in, k)`` (residual blocks, no biases), NAF's pixel and context branches (bias=True,
    residual=False)."""

    def __init__(self, in_channels: int, channels: int = 128, kernel_size: int = 1, *, blocks: int = 2,
                 residual: bool = True, bias: bool = False, stem_bias: bool | None = None) -> None:
        stem_bias = bias if stem_bias is None else stem_bias
        super().__init__(conv(in_channels, channels, kernel_size, stem_bias),
                         *[GNSiLUBlock(channels, kernel_size, residual=residual, bias=bias) for _ in range(blocks)])
