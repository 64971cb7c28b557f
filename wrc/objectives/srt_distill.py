"""SRT as a teacher: train any feed-forward upsampler to reproduce SRT's features.

SRT needs (2d + 1)^2 backbone passes per image; distilled into a feed-forward upsampler, that cost is
paid during training only. The target is SRT's aggregate (wrc.upsamplers.srt) on the grid the student
is asked for: the image's pixel grid (``scale=None``) or ``scale`` times the token grid.
"""

from __future__ import annotations

from typing import Any

import torch

from wrc.backbone import FrozenBackbone
from wrc.data.augment import ColorJitter
from wrc.losses import DISTANCES, feature_distance
from wrc.objectives.base import Objective, register_objective
from wrc.upsamplers.base import Upsampler
from wrc.upsamplers.srt import SRT


@register_objective
class SRTDistill(Objective):
    """Args:
    teacher: keyword arguments of the SRT upsampler (max_shift, num_views, aggregate, padding_mode, ...).
    scale: output grid as a multiple of the token grid; None = the image's pixel grid.
    distance: "cosine", "l1" or "l2".
    jitter: keyword arguments of ``ColorJitter`` applied to the images first, or None.
    """

    name = "srt_distill"

    def __init__(self, teacher: dict[str, Any] | None = None, scale: int | None = None, distance: str = "cosine",
                 jitter: dict | None = None) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"objective.distance={distance!r}; expected one of {DISTANCES}")
        if scale is not None and scale < 1:
            raise ValueError(f"objective.scale must be a positive int or None (pixel grid); got {scale}")
        self.teacher_kwargs, self.scale, self.distance = dict(teacher or {}), scale, distance
        self.jitter = ColorJitter(**jitter) if jitter is not None else None
        self._teacher: SRT | None = None

    def teacher(self, backbone: FrozenBackbone) -> SRT:
        if self._teacher is None or self._teacher.in_channels != backbone.embed_dim:
            self._teacher = SRT(backbone.embed_dim, backbone.patch_size, **self.teacher_kwargs)
        return self._teacher

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.jitter is not None:
            images = self.jitter(images)
        with torch.no_grad():
            low = backbone(images)
            size = images.shape[-2:] if self.scale is None else (low.shape[-2] * self.scale, low.shape[-1] * self.scale)
            target = self.teacher(backbone)(low, images, output_size=size, backbone=backbone)
        pred = upsampler(low, images, output_size=size, backbone=backbone)
        loss = feature_distance(pred.float(), target, self.distance)
        return {"loss": loss, "loss_srt": loss.detach()}
