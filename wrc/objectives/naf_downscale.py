"""NAF's training objective: upsample the features of the half-size image to those of the image, 2x only.

    L = MSE(U(F(x / 2), guide, grid of F(x)), F(x)),    guide = x resized to min(224, 4 x that grid) per side

(modern_peers.md section 4.2: 512 px images, 16 -> 32 tokens at patch 16, a 128 px guidance, plain MSE with no
normalisation, so magnitudes are matched too). The guidance is deliberately small: capped at 4x the output, as
NAF caps it at inference. Works with any upsampler; the guidance resize is antialiased (the framework's
``resize``).
"""

from __future__ import annotations

import torch

from wrc.backbone import FrozenBackbone
from wrc.losses import DISTANCES, feature_distance
from wrc.objectives.base import Objective, register_objective
from wrc.upsamplers.base import Upsampler, resize


@register_objective
class NAFDownscale(Objective):
    """Args:
    input_scale: the input features come from the image resized by this factor (NAF: 0.5).
    guidance_ratio: the guidance side is at most this many times the target grid's (NAF: 4).
    guidance_max: and at most this many pixels (NAF: 224).
    distance: "l2" (NAF: plain MSE), "l1" or "cosine".
    """

    name = "naf_downscale"

    def __init__(self, input_scale: float = 0.5, guidance_ratio: float = 4.0, guidance_max: int = 224,
                 distance: str = "l2") -> None:
        super().__init__()
        if not 0 < input_scale < 1:
            raise ValueError(f"objective.input_scale must be in (0, 1) (the input image is smaller); got {input_scale}")
        if guidance_ratio <= 0 or guidance_max < 1:
            raise ValueError(f"objective.guidance_ratio and objective.guidance_max must be positive; got "
                             f"{guidance_ratio}, {guidance_max}")
        if distance not in DISTANCES:
            raise ValueError(f"objective.distance={distance!r}; expected one of {DISTANCES}")
        self.input_scale, self.guidance_ratio, self.guidance_max = input_scale, guidance_ratio, guidance_max
        self.distance = distance

    def guidance_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        """min(guidance_max, guidance_ratio x grid) per side: 128 px for NAF's 32 x 32 target."""
        return tuple(max(1, min(self.guidance_max, int(self.guidance_ratio * n))) for n in grid)

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        small = resize(images, (max(1, round(height * self.input_scale)), max(1, round(width * self.input_scale))))
        with torch.no_grad():
            target = backbone(images)  # B, C, h, w
            low = backbone(small)  # B, C, about h / 2, w / 2
        guide = resize(images, self.guidance_size(tuple(target.shape[-2:])))
        pred = upsampler(low, guide.clamp(0, 1), output_size=tuple(target.shape[-2:]))
        loss = feature_distance(pred.float(), target.float(), self.distance)
        return {"loss": loss, "loss_2x": loss.detach()}
