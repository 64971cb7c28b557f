"""A backbone whose tokens are known functions of the pixels: a fixed P x P patch embedding, no attention.

``mean=True`` makes every token the mean of its patch (channel c of the token = mean of image channel
c % 3), so tests can predict outputs analytically; otherwise a fixed random linear map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ToyBackbone(nn.Module):
    def __init__(self, channels: int, patch_size: int, mean: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.embed_dim, self.patch_size = channels, patch_size
        if mean:
            weight = torch.zeros(channels, 3, patch_size, patch_size)
            for c in range(channels):
                weight[c, c % 3] = 1.0 / patch_size**2
        else:
            weight = torch.randn(channels, 3, patch_size, patch_size, generator=torch.Generator().manual_seed(seed))
            weight = weight / patch_size
        self.register_buffer("weight", weight)
        self.calls = 0  # images seen, to count backbone passes

    def forward(self, image: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        self.calls += image.shape[0]
        return F.conv2d(image, self.weight, stride=stride or self.patch_size)
