"""Guidance-image normalisation shared by the image-guided upsamplers."""

from __future__ import annotations

import torch
from torch import nn

IMAGE_TOLERANCE = 1e-2  # how far an image in [0, 1] may stray: bf16 rounding of 1.0, resampling overshoot;
# never a 0..255 or a mean/std-normalised image. The backbone and every upsampler check against this one value.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GuidanceNormalize(nn.Module):
    """Normalise a [0, 1] guidance image with ImageNet statistics (each consumer normalises for itself).

    The buffers are not persistent, so checkpoints hold no copy of the constants.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std
