"""The backbone-side baselines of the papers: more tokens from the backbone itself, no upsampler.

- ``large_image``: run the backbone on the image resized so that its token grid is the requested
  size (s times the input for an s x finer grid). Cost grows with s^2 tokens (s^4 attention).
- ``strided``: run the patch embedding with stride P / s (overlapping patches) and interpolated
  position embeddings, so the same image yields an s x finer grid. The image is replicate-padded by
  (P - P/s) / 2 on each side so token centres land on the centres of the finer grid's cells (when
  P - P/s is odd the extra pixel goes to the bottom/right). s must divide P: the largest such s
  not above the requested factor is used and one bilinear resize covers the rest.
Neither has parameters; both need the backbone (pass ``backbone=``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.upsamplers.base import Upsampler, register_upsampler, resize


@register_upsampler
class LargeImage(Upsampler):
    """Args:
    max_side: refuse to run the backbone on images with a side above this many pixels (memory guard).
    """

    name = "large_image"
    needs_backbone = True
    trainable = False

    def __init__(self, in_channels: int, patch_size: int, *, max_side: int = 4096) -> None:
        super().__init__(in_channels, patch_size)
        self.max_side = max_side

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        pixels = (size[0] * self.patch_size, size[1] * self.patch_size)
        if max(pixels) > self.max_side:
            raise ValueError(f"large_image would run the backbone on a {pixels[0]}x{pixels[1]} image, above "
                             f"model.max_side={self.max_side}; ask for a smaller output or raise max_side")
        return backbone(resize(image, pixels, mode="bicubic").clamp(0, 1))


@register_upsampler
class Strided(Upsampler):
    name = "strided"
    needs_backbone = True
    trainable = False

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        h, w = features.shape[-2:]
        wanted = max(1, min(size[0] // h, size[1] // w))
        factor = max(s for s in range(1, wanted + 1) if self.patch_size % s == 0)
        if factor == 1:
            return resize(features, size)
        stride = self.patch_size // factor
        image = resize(image, (h * self.patch_size, w * self.patch_size))  # the pixels the token grid tiles
        margin = self.patch_size - stride
        low, high = margin // 2, margin - margin // 2
        dense = backbone(F.pad(image, (low, high, low, high), mode="replicate"), stride=stride)
        return resize(dense, size)
