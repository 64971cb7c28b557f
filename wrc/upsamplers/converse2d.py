"""Converse2D (Huang et al., ICCV 2025) and a transposed convolution inside the WRC network.

The two ablations of the WRC paper's Table 3: the same guided network with the upsampling layer
replaced by a scalar-weight reverse convolution (per-channel lam and alpha, the exact FFT closed form),
or by a learned 2x2 stride-2 transposed convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from wrc.layers.reverse_conv import ReverseConv2d
from wrc.upsamplers.base import register_upsampler
from wrc.upsamplers.guided import GuidedReverseNet


@register_upsampler
class Converse2D(GuidedReverseNet):
    """kernel_size: k of the forward model (>= 2); padding, padding_mode: against wrap-around."""

    name = "converse2d"

    def make_layer(self, channels: int, guide_channels: int, *, kernel_size: int = 2, padding: int = 2,
                   padding_mode: str = "replicate") -> nn.Module:
        return ReverseConv2d(channels, scale=2, kernel_size=kernel_size, padding=padding, padding_mode=padding_mode)

    def make_output_solver(self, channels: int, guide_channels: int) -> nn.Module:
        """The same output step as WRC's with scalar weights per channel."""
        return ReverseConv2d(channels, scale=2, kernel_size=2)

    def lift(self, y: torch.Tensor, z: torch.Tensor, guide_2x: torch.Tensor) -> torch.Tensor:
        return self.layer(y, z)

    def solve_output(self, features: torch.Tensor, prediction: torch.Tensor, guide_1x: torch.Tensor,
                     guide_2x: torch.Tensor) -> torch.Tensor:
        return self.output_solver(features, prediction)


@register_upsampler
class WRCTransposedConv(GuidedReverseNet):
    """The WRC network with a 2x2, stride-2 transposed convolution as its upsampling layer."""

    name = "wrc_tconv"

    def make_layer(self, channels: int, guide_channels: int) -> nn.Module:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)

    def lift(self, y: torch.Tensor, z: torch.Tensor, guide_2x: torch.Tensor) -> torch.Tensor:
        return self.layer(y)
