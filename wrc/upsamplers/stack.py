"""Upsamplers built from independent 2x layers (FeatUp-JBU, resize-conv, transposed conv).

Size policy: layer i is applied while the output is still smaller than the requested size and
layers remain; a ``finish`` hook runs (e.g. JBU's refinement), then one resize lands exactly on the
requested size (antialiased when shrinking, unless a subclass says otherwise: FeatUp-JBU's paper preset
samples bilinearly, as the original). So a 224 image with patch 14 (16 tokens) gets
32 -> 64 -> 128 -> 256 from four layers and is then resized to 224, as FeatUp does; asking for 2x
uses only the first layer.
"""

from __future__ import annotations

import torch
from torch import nn

from wrc.upsamplers.base import Upsampler, resize


class StackedUpsampler(Upsampler):
    """Subclasses fill ``self.layers`` (each doubles the grid) and implement ``step``."""

    scale = None
    layers: nn.ModuleList

    def step(self, index: int, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Layer ``index``: (B, C, h, w) -> (B, C, 2h, 2w), guided by the full-resolution image."""
        raise NotImplementedError

    def finish(self, features: torch.Tensor) -> torch.Tensor:
        """Applied after the last layer used, before the final resize."""
        return features

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        out = features
        for index in range(len(self.layers)):
            if out.shape[-2] >= size[0] and out.shape[-1] >= size[1]:
                break
            out = self.step(index, out, image)
        return resize(self.finish(out), size)
