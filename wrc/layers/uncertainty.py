"""The per-token likelihood scale of FeatUp's Gaussian objective.

A learned layer (its weights are trained and checkpointed with whoever owns it), not a loss: it lives
here so that the multi-view objective and the implicit upsampler share it without importing each other.
"""

from __future__ import annotations

import torch
from torch import nn


class ScaleNet(nn.Module):
    """Per-token likelihood scale s = exp(Conv1x1(f) + 0.1) >= 1e-4, initialised small (FeatUp)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)
        with torch.no_grad():
            self.conv.weight.mul_(0.1)
            self.conv.bias.mul_(0.1)

    def forward(self, target: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.conv(target) + 0.1).clamp_min(1e-4)
