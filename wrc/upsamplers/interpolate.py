"""Training-free interpolation baselines: bilinear, bicubic and nearest."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.upsamplers.base import Upsampler, register_upsampler


class Interpolate(Upsampler):
    """Fixed interpolation of the token grid to any size, with half-pixel centres (align_corners=False).

    Token (i, j) is the average over its patch, so its centre sits at pixel ((i + 0.5) P, (j + 0.5) P):
    the same geometry every learned method in this project uses.
    """

    mode = "bilinear"
    trainable = False

    def upsample_to(
        self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int], backbone: nn.Module | None
    ) -> torch.Tensor:
        align = None if self.mode == "nearest" else False
        return F.interpolate(features, size=size, mode=self.mode, align_corners=align)


@register_upsampler
class Bilinear(Interpolate):
    name, mode = "bilinear", "bilinear"


@register_upsampler
class Bicubic(Interpolate):
    name, mode = "bicubic", "bicubic"


@register_upsampler
class Nearest(Interpolate):
    name, mode = "nearest", "nearest"
