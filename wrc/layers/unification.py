"""AnyUp's learned feature unification: any number of feature channels -> a fixed width, one model for any backbone.

A bank of M learnable k x k filters; every channel c of the per-pixel L2-normalised features is filtered by every
filter m (depthwise, zero padding, divided by the number of in-bounds taps so borders are not darker), a softmax
over the M responses per channel, then the mean over channels: u[m] = mean_c softmax_m(y[:, c])[m]. The mean
makes the result independent of the channel count C (modern_peers.md section 2.1, change 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureUnification(nn.Module):
    """(B, C, h, w) with any C -> (B, filters, h, w); ``channel_chunk`` channels at a time bound the memory."""

    def __init__(self, filters: int = 128, kernel_size: int = 5, channel_chunk: int = 64) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd; got {kernel_size}")
        self.kernel_size, self.channel_chunk = kernel_size, channel_chunk
        self.bank = nn.Parameter(torch.randn(filters, 1, kernel_size, kernel_size))

    def tap_counts(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """(1, 1, h, w): how many of the k x k taps fall inside the map at each position."""
        ones = torch.ones(1, 1, h, w, device=like.device, dtype=like.dtype)
        box = torch.ones(1, 1, self.kernel_size, self.kernel_size, device=like.device, dtype=like.dtype)
        return F.conv2d(ones, box, padding=self.kernel_size // 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4:
            raise ValueError(f"features must be (B, C, h, w); got {tuple(features.shape)}")
        b, c, h, w = features.shape
        x = F.normalize(features, dim=1)
        counts = self.tap_counts(h, w, x)
        bank = self.bank.to(x.dtype)
        total = x.new_zeros(b, bank.shape[0], h, w)
        for start in range(0, c, self.channel_chunk):
            part = x[:, start:start + self.channel_chunk]
            n = part.shape[1]
            responses = F.conv2d(part.reshape(b * n, 1, h, w), bank, padding=self.kernel_size // 2) / counts
            total += responses.softmax(dim=1).view(b, n, -1, h, w).sum(dim=1)
        return total / c
