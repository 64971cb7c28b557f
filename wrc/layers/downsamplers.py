"""FeatUp's learned downsamplers: map high-resolution features back to a backbone's token grid.

Both pool windows of ``kernel_size`` pixels with stride H / h (one window per token, centred on the
token's patch; kernel_size > stride overlaps neighbours, the input then padded by replication):
- ``SimpleDownsampler``: one learned blur kernel, non-negative and normalised (|w| / sum |w|);
- ``AttentionDownsampler``: content-dependent attention pooling, softmax over the window of a learned
  per-pixel salience with a learned per-tap affine map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _window_geometry(hr: torch.Tensor, grid: tuple[int, int], kernel_size: int) -> tuple[int, tuple[int, ...]]:
    """(stride, padding) with which kernel_size windows at stride H / h give exactly the (h, w) grid."""
    height, width = hr.shape[-2:]
    if height % grid[0] or width % grid[1] or height // grid[0] != width // grid[1]:
        raise ValueError(f"features of {height}x{width} do not tile a {grid[0]}x{grid[1]} grid with square cells")
    stride = height // grid[0]
    if kernel_size < stride:
        raise ValueError(f"kernel_size={kernel_size} must cover a cell of {stride} pixels")
    extra = kernel_size - stride
    return stride, (extra // 2, extra - extra // 2, extra // 2, extra - extra // 2)


class SimpleDownsampler(nn.Module):
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.ones(kernel_size, kernel_size))

    def kernel(self) -> torch.Tensor:
        return self.weight.abs() / self.weight.abs().sum()

    def forward(self, hr: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        stride, padding = _window_geometry(hr, grid, self.kernel_size)
        b, c = hr.shape[:2]
        x = F.pad(hr, padding, mode="replicate")
        out = F.conv2d(x.reshape(b * c, 1, *x.shape[-2:]), self.kernel()[None, None].to(x.dtype), stride=stride)
        return out.view(b, c, *out.shape[-2:])


class AttentionDownsampler(nn.Module):
    """Args:
    channels: feature channels C (the salience is a 1x1 convolution C -> 1).
    kernel_size: window in pixels.
    dropout: on the features feeding the salience (train mode).
    position_dropout: share of windows whose salience is zeroed in train mode (FeatUp: 0.2, there also in eval).
    """

    def __init__(self, channels: int, kernel_size: int, dropout: float = 0.2, position_dropout: float = 0.2) -> None:
        super().__init__()
        self.kernel_size, self.position_dropout = kernel_size, position_dropout
        self.dropout = nn.Dropout(dropout)
        self.salience = nn.Conv2d(channels, 1, 1)
        taps = kernel_size * kernel_size
        self.tap_weight = nn.Parameter(1 + 0.01 * torch.randn(taps))
        self.tap_bias = nn.Parameter(0.01 * torch.randn(taps))

    def forward(self, hr: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        stride, padding = _window_geometry(hr, grid, self.kernel_size)
        x = F.pad(hr, padding, mode="replicate")
        k, b, c = self.kernel_size, hr.shape[0], hr.shape[1]
        patches = F.unfold(x, k, stride=stride).view(b, c, k * k, -1)  # B, C, k^2, h w
        logits = F.unfold(self.salience(self.dropout(x)), k, stride=stride)  # B, k^2, h w
        if self.training and self.position_dropout > 0:
            keep = (torch.rand(b, 1, logits.shape[-1], device=hr.device) >= self.position_dropout).to(logits.dtype)
            logits = logits * keep
        attention = torch.softmax(logits * self.tap_weight[:, None] + self.tap_bias[:, None], dim=1)
        return (patches * attention[:, None]).sum(dim=2).view(b, c, *grid)


def create_downsampler(name: str, channels: int, kernel_size: int) -> nn.Module:
    if name == "simple":
        return SimpleDownsampler(kernel_size)
    if name == "attention":
        return AttentionDownsampler(channels, kernel_size)
    raise ValueError(f"downsampler={name!r}; expected 'simple' or 'attention'")
