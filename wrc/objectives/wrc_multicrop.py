"""The WRC training recipe: self-distillation from the backbone at twice the input resolution.

For a batch of high-resolution images I (S x S, e.g. 448):
- the global view I_lo = resize(I, S / 2) gives features F(I_lo) on an (h, w) grid; the upsampler
  predicts U = U(F(I_lo), I_lo) on the (2h, 2w) grid, i.e. one cell per patch of I;
- local term: ``num_crops`` crops of I of size S / 2, at offsets on the patch grid, each compared with
  the window of U it covers: the backbone sees the crop at full resolution, so F(crop) is a sharp
  target for exactly those cells;
- global term: U against F(I), the backbone on the real high-resolution image (the original code
  used F(bilinear-upsampled I_lo), which carries no extra detail);
- consistency term: U(F(I_lo), augment(I_lo)) against U itself with its gradient stopped (no extra
  forward pass, so no normalisation statistics change in a target pass).
Each term is the cosine distance plus the MSE of features min-max normalised per position by the
target's range (``cosine_mse``); every weight is a config value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrc.backbone import FrozenBackbone
from wrc.data.photometric import PhotometricAugment
from wrc.objectives.base import Objective, register_objective
from wrc.upsamplers.base import Upsampler


def cosine_mse(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """mean(1 - cos) + mean(((pred - m) / (M - m) - (target - m) / (M - m))^2), m/M = target's min/max over C."""
    pred, target = pred.float(), target.float()
    cosine = (1 - F.cosine_similarity(pred, target, dim=1)).mean()
    low = target.amin(dim=1, keepdim=True)
    span = target.amax(dim=1, keepdim=True) - low + eps
    return cosine + ((pred - low) / span - (target - low) / span).square().mean()


def crop_offsets(grid: tuple[int, int], crop_grid: tuple[int, int], count: int) -> torch.Tensor:
    """(count, 2) random top-left cells of crop_grid windows inside grid (global torch RNG, so resumable)."""
    high = torch.tensor([grid[0] - crop_grid[0] + 1, grid[1] - crop_grid[1] + 1])
    return (torch.rand(count, 2) * high).long()


@register_objective
class WRCMulticrop(Objective):
    """Args:
    num_crops: local crops per image.
    local_weight, global_weight, consistency_weight: weights of the three terms (0 disables a term).
    augment: keyword arguments of ``PhotometricAugment`` for the consistency term.
    """

    name = "wrc_multicrop"

    def __init__(self, num_crops: int = 4, local_weight: float = 1.0, global_weight: float = 1.0,
                 consistency_weight: float = 1.0, augment: dict | None = None) -> None:
        super().__init__()
        if num_crops < 0:
            raise ValueError(f"objective.num_crops must be >= 0; got {num_crops}")
        weights = {"local_weight": local_weight, "global_weight": global_weight,
                   "consistency_weight": consistency_weight}
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"objective.{name} must be >= 0; got {value}")
        self.num_crops = num_crops
        self.local_weight, self.global_weight, self.consistency_weight = local_weight, global_weight, consistency_weight
        self.augment = PhotometricAugment(**(augment or {}))

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, height, width = images.shape
        p = backbone.patch_size
        if height % (2 * p) or width % (2 * p):
            raise ValueError(f"wrc_multicrop needs data.image_size divisible by 2 x patch size = {2 * p}; "
                             f"got images of {height}x{width}")
        low_size = (height // 2, width // 2)
        low = F.interpolate(images, size=low_size, mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            low_feats = backbone(low)  # B, C, h, w
        grid = (2 * low_feats.shape[-2], 2 * low_feats.shape[-1])  # one cell per patch of the full image
        pred = upsampler(low_feats, low, output_size=grid)  # B, C, 2h, 2w
        losses: dict[str, torch.Tensor] = {}
        total = pred.new_zeros((), dtype=torch.float32)

        if self.local_weight > 0 and self.num_crops > 0:
            crop_grid = low_feats.shape[-2:]
            offsets = crop_offsets(grid, crop_grid, b * self.num_crops)
            owners = torch.arange(b).repeat_interleave(self.num_crops)
            crops = torch.stack([images[i, :, oy * p : (oy + crop_grid[0]) * p, ox * p : (ox + crop_grid[1]) * p]
                                 for i, (oy, ox) in zip(owners.tolist(), offsets.tolist(), strict=True)])
            windows = torch.stack([pred[i, :, oy : oy + crop_grid[0], ox : ox + crop_grid[1]]
                                   for i, (oy, ox) in zip(owners.tolist(), offsets.tolist(), strict=True)])
            with torch.no_grad():
                crop_feats = backbone(crops)  # B*K, C, h, w
            losses["loss_local"] = cosine_mse(windows, crop_feats)
            total = total + self.local_weight * losses["loss_local"]
        if self.global_weight > 0:
            with torch.no_grad():
                high_feats = backbone(images)  # the real high-resolution image
            if high_feats.shape[-2:] != grid:  # only when the backbone's size policy rounded differently
                high_feats = F.interpolate(high_feats, size=grid, mode="bilinear", align_corners=False)
            losses["loss_global"] = cosine_mse(pred, high_feats)
            total = total + self.global_weight * losses["loss_global"]
        if self.consistency_weight > 0:
            augmented = upsampler(low_feats, self.augment(low), output_size=grid)
            losses["loss_consistency"] = cosine_mse(augmented, pred.detach())
            total = total + self.consistency_weight * losses["loss_consistency"]
        losses = {k: v.detach() for k, v in losses.items()}
        losses["loss"] = total
        return losses
