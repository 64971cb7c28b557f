"""Convolutional building blocks shared by the image-guided upsamplers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, max_groups: int = 16) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides ``channels``.

    Independent of the batch size, unlike BatchNorm (the original WRC trains with batch 4), and identical
    in training and evaluation.
    """
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1, 3x3 (stride), 1x1, each normalised; projected residual when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = in_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), group_norm(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), group_norm(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False), group_norm(out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          group_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class GuidanceEncoder(nn.Module):
    """Image -> guidance features at 2x the token grid and at the token grid, for any patch size.

    Two stride-2 stages reach 1/4 of the image; adaptive max-pooling lands on exactly 2x the token grid
    (the identity for patch 8, a 2x2 max-pool for patch 16, a fractional pool for patch 14); one more
    stride-2 stage gives the token grid.
    """

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 1, bias=False), group_norm(channels), nn.ReLU(inplace=True))
        self.to_quarter = nn.Sequential(Bottleneck(channels, channels, 2), Bottleneck(channels, channels),
                                        Bottleneck(channels, channels, 2), Bottleneck(channels, channels))
        self.to_grid = nn.Sequential(Bottleneck(channels, channels, 2), Bottleneck(channels, channels))

    def forward(self, image: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        quarter = self.to_quarter(self.stem(image))  # B, k, H/4, W/4
        guide_2x = F.adaptive_max_pool2d(quarter, (2 * grid[0], 2 * grid[1]))  # B, k, 2h, 2w
        guide_1x = self.to_grid(guide_2x)  # B, k, h, w
        if guide_1x.shape[-2:] != tuple(grid):  # odd 2x sizes cannot happen; kept exact for safety
            guide_1x = F.adaptive_avg_pool2d(guide_1x, grid)
        return guide_2x, guide_1x


def half_pixel_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear upsampling with half-pixel centres (align_corners=False): the prior's required geometry."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def fused_width(in_channels: int, image_channels: int) -> int:
    """Width of the fused features inside the guided networks: (C + k) / 2 rounded up to a multiple of 8."""
    return int(math.ceil((in_channels + image_channels) / 2 / 8) * 8)
