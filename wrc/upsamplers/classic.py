"""Classic learned upsamplers, the baselines of the FeatUp and LiFT papers: resize-conv and transposed conv.

Both are stacks of independent 2x layers (the size policy of wrc.upsamplers.stack) and start as plain
interpolation, so any objective trains them from a sensible initial point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.guidance import GuidanceNormalize
from wrc.upsamplers.base import register_upsampler, resize
from wrc.upsamplers.stack import StackedUpsampler


@register_upsampler
class ResizeConv(StackedUpsampler):
    """Per layer: bilinear 2x, then out = up + Conv3x3([up; guidance at 2x]) (zero-initialised: bilinear at
    the start). 4 x ((C + 3) 9 C + C) parameters: 5.35M for C = 384, as in the FeatUp baseline.

    Args:
        num_layers: number of 2x layers.
        guidance: concatenate the (normalised) image resized to each layer's grid.
    """

    name = "resize_conv"

    def __init__(self, in_channels: int, patch_size: int, *, num_layers: int = 4, guidance: bool = True) -> None:
        super().__init__(in_channels, patch_size)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        self.guidance = guidance
        self.normalize = GuidanceNormalize()
        extra = 3 if guidance else 0
        self.layers = nn.ModuleList(nn.Conv2d(in_channels + extra, in_channels, 3, padding=1)
                                    for _ in range(num_layers))
        for conv in self.layers:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def step(self, index: int, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        size = (2 * features.shape[-2], 2 * features.shape[-1])
        up = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        inputs = torch.cat([up, resize(self.normalize(image), size)], dim=1) if self.guidance else up
        return up + self.layers[index](inputs)


def bilinear_kernel(size: int) -> torch.Tensor:
    """The (size x size) kernel with which a stride size // 2 transposed convolution is bilinear upsampling."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    return ramp[:, None] * ramp[None, :]


@register_upsampler
class TransposedConv(StackedUpsampler):
    """Per layer: ConvTranspose2d(C, C, 4, stride 2, padding 1), initialised to bilinear upsampling
    (identity across channels, the FCN initialisation). No image guidance.

    Args:
        num_layers: number of 2x layers.
        groups: channel groups of the convolution (1 = full C x C mixing, 16 C^2 + C parameters per
            layer; C = depthwise, 16 C + C).
    """

    name = "transposed_conv"

    def __init__(self, in_channels: int, patch_size: int, *, num_layers: int = 4, groups: int = 1) -> None:
        super().__init__(in_channels, patch_size)
        if num_layers < 1 or groups < 1 or in_channels % groups:
            raise ValueError(f"need num_layers >= 1 and groups dividing in_channels={in_channels}; "
                             f"got num_layers={num_layers}, groups={groups}")
        self.layers = nn.ModuleList(nn.ConvTranspose2d(in_channels, in_channels, 4, stride=2, padding=1, groups=groups)
                                    for _ in range(num_layers))
        per_group = in_channels // groups
        with torch.no_grad():
            for conv in self.layers:  # weight: (C, C / groups, 4, 4); channel c maps to itself
                conv.weight.zero_()
                for c in range(in_channels):
                    conv.weight[c, c % per_group] = bilinear_kernel(4)
                conv.bias.zero_()

    def step(self, index: int, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.layers[index](features)
