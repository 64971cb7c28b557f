"""DenseFeatureExtractor: the one object every training loop, evaluation and figure goes through."""

from __future__ import annotations

import torch
from torch import nn

from wrc.backbone import FrozenBackbone
from wrc.upsamplers.base import Upsampler


class DenseFeatureExtractor(nn.Module):
    """Frozen backbone followed by an upsampler: image in [0, 1] -> dense features.

    A new upsampler works in every evaluation the moment it is registered, because evaluations only
    ever call ``extractor(image, output_size)``.
    """

    def __init__(self, backbone: FrozenBackbone, upsampler: Upsampler) -> None:
        super().__init__()
        if upsampler.in_channels != backbone.embed_dim:
            raise ValueError(
                f"upsampler {upsampler.name!r} expects {upsampler.in_channels}-channel features but backbone "
                f"{backbone.name} has embed_dim={backbone.embed_dim}: use an upsampler checkpoint trained on "
                "this backbone, or the backbone it was trained on"
            )
        if upsampler.patch_size != backbone.patch_size:
            raise ValueError(
                f"upsampler {upsampler.name!r} was built for patch size {upsampler.patch_size} but backbone "
                f"{backbone.name} has patch size {backbone.patch_size}"
            )
        self.backbone, self.upsampler = backbone, upsampler

    def forward(self, image: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Image (B, 3, H, W) -> features (B, C, H', W'); the upsampler's default size when None."""
        features = self.backbone(image)
        return self.upsampler(features, image, output_size, backbone=self.backbone)
