"""LiFT's multi-scale self-supervised objective (Suri et al., ECCV 2024, eq. 1).

    L = d(U(x/2, F(x/2)), F(x)) + d(U(x/4, F(x/4)), F(x/2))

The upsampler U must turn the features of a downscaled image into the backbone's own features of
the image at the next scale up. d is the cosine distance (1 - cos) averaged over positions by
default; images are colour-jittered first, the paper's only augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrc.backbone import FrozenBackbone
from wrc.data.augment import ColorJitter
from wrc.losses import DISTANCES, feature_distance
from wrc.objectives.base import Objective, register_objective
from wrc.upsamplers.base import Upsampler


def downscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    size = (images.shape[-2] // factor, images.shape[-1] // factor)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


@register_objective
class LiftMultiscale(Objective):
    """Args:
    scale_weights: weights of the (x/2 -> x) and (x/4 -> x/2) terms; a zero skips that term.
    distance: "cosine" (paper), "l1" or "l2".
    jitter: keyword arguments of ``ColorJitter``, or None to train without augmentation.
    """

    name = "lift_multiscale"

    def __init__(self, scale_weights: tuple[float, float] = (1.0, 1.0), distance: str = "cosine",
                 jitter: dict | None = None) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"objective.distance={distance!r}; expected one of {DISTANCES}")
        if len(scale_weights) != 2 or min(scale_weights) < 0:
            raise ValueError(f"objective.scale_weights must be two non-negative numbers; got {scale_weights}")
        self.scale_weights, self.distance = tuple(float(w) for w in scale_weights), distance
        self.jitter = ColorJitter(**jitter) if jitter is not None else None

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.jitter is not None:
            images = self.jitter(images)
        pyramid = [images, downscale(images, 2), downscale(images, 4)]
        with torch.no_grad():
            targets = [backbone(level) for level in pyramid]
        losses: dict[str, torch.Tensor] = {}
        total = images.new_zeros(())
        for k, weight in enumerate(self.scale_weights):  # k=0: x/2 -> x, k=1: x/4 -> x/2
            if weight == 0:
                continue
            source, target = pyramid[k + 1], targets[k]
            pred = upsampler(targets[k + 1], source, output_size=target.shape[-2:])
            term = feature_distance(pred.float(), target, self.distance)
            losses[f"loss_x{2 ** (k + 1)}"] = term.detach()
            total = total + weight * term
        losses["loss"] = total
        return losses
