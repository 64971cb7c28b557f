"""AnyUp's crop-based objective (Wimmer et al., ICLR 2026; shared/reference/modern_peers.md section 2.2).

For a training image I (448 px), the guidance G = I resized to half size and the input F = F(G) (16 x 16 tokens
at patch 14). The upsampler predicts P = U(F, G) on the 2x grid (32 x 32, one cell per patch of I). Three terms:

    L = cosMSE(P_crop, F(crop))                                        ``num_crops`` half-size crops of I
        + 0.1 cosMSE(U(F, G_aug -> 224), stop_grad(U(F, G -> 224)))    augmented-guidance consistency
        + 0.1 cosMSE(AreaDown_{16 x 16}(P), F)                         input consistency

Each crop's top-left corner lies on the patch grid, so the backbone's tokens on the crop are the sharp targets of
exactly the window P[top/P : top/P + 16, left/P : left/P + 16]. G_aug is I photometrically augmented
(``Photometric``, per image), then resized.

Not reproduced: the multi-backbone checkpoint's training (a backbone drawn per batch from several): a run here
trains on one backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from wrc.backbone import FrozenBackbone
from wrc.losses import cos_mse
from wrc.objectives.base import Objective, register_objective
from wrc.upsamplers.base import Upsampler, resize

JPEG_QUALITIES = (95, 80, 60, 40)
JPEG_WEIGHTS = (0.25, 0.35, 0.25, 0.15)


def aligned_crops(images: torch.Tensor, pred: torch.Tensor, patch: int, crop_grid: tuple[int, int],
                  per_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_image`` random crops of each image with corners on the patch grid, and the windows of ``pred`` (one
    cell per patch) they cover: (B * K, 3, ch * P, cw * P) and (B * K, C, ch, cw). Draws from the global torch RNG."""
    (ch, cw), (height, width) = crop_grid, pred.shape[-2:]
    count = images.shape[0] * per_image
    tops = torch.randint(0, height - ch + 1, (count,)).tolist()
    lefts = torch.randint(0, width - cw + 1, (count,)).tolist()
    owners = torch.arange(images.shape[0]).repeat_interleave(per_image).tolist()
    boxes = list(zip(owners, tops, lefts, strict=True))
    crops = torch.stack([images[i, :, y * patch:(y + ch) * patch, x * patch:(x + cw) * patch] for i, y, x in boxes])
    windows = torch.stack([pred[i, :, y:y + ch, x:x + cw] for i, y, x in boxes])
    return crops, windows


class RandomJPEG(nn.Module):
    """JPEG compression of a (3, H, W) [0, 1] image at a quality drawn from ``qualities`` with ``weights``."""

    def __init__(self, qualities: tuple[int, ...] = JPEG_QUALITIES, weights: tuple[float, ...] = JPEG_WEIGHTS) -> None:
        super().__init__()
        if len(qualities) != len(weights) or not qualities or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"qualities {qualities} need as many non-negative weights (not all 0); got {weights}")
        self.qualities, self.weights = tuple(qualities), torch.tensor(weights, dtype=torch.float64)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        quality = self.qualities[int(torch.multinomial(self.weights, 1))]
        pixels = TF.to_dtype(image.detach().cpu(), torch.uint8, scale=True)  # the codec reads 8-bit CPU images
        return TF.to_dtype(TF.jpeg(pixels, quality), image.dtype, scale=True).to(image.device)


class Photometric(nn.Module):
    """AnyUp's guidance augmentation, in its order, each image with its own draws (torchvision transforms).

    Probabilities are raised to the power 1 / ``strength`` (1: the listed values): photometric distortion with
    the ranges of ColorJitter(0.2, 0.2, 0.3, 0.05), each of its steps (and torchvision's channel permutation)
    with p = 0.5; grayscale 0.1; Gaussian blur (kernel 5, sigma 0.3-1.5) 0.35; JPEG always, quality 95/80/60/40
    with weights 0.25/0.35/0.25/0.15; autocontrast 0.2; equalize 0.15; sharpness 1.5 at 0.2; posterize to 5 bits
    0.1; solarize above 0.9 0.05; invert 0.02; Gaussian noise (sigma 0.03, clipped) 0.6.
    """

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        if strength <= 0:
            raise ValueError(f"objective.augment_strength must be > 0; got {strength}")

        def p(value: float) -> float:
            return value ** (1 / strength)

        self.transform = v2.Compose([
            v2.RandomPhotometricDistort(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.7, 1.3),
                                        hue=(-0.05, 0.05), p=p(0.5)),
            v2.RandomGrayscale(p(0.1)),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.3, 1.5))], p=p(0.35)),
            RandomJPEG(),
            v2.RandomAutocontrast(p(0.2)),
            v2.RandomEqualize(p(0.15)),
            v2.RandomAdjustSharpness(1.5, p(0.2)),
            v2.RandomPosterize(5, p(0.1)),
            v2.RandomSolarize(0.9, p(0.05)),
            v2.RandomInvert(p(0.02)),
            v2.RandomApply([v2.GaussianNoise(sigma=0.03, clip=True)], p=p(0.6)),
        ])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images]).clamp(0, 1)


@register_objective
class AnyUpCrops(Objective):
    """Args:
    num_crops: half-size crops per image (AnyUp: 4).
    crop_weight, consistency_weight, input_weight: weights of the three terms (1, 0.1, 0.1; 0 skips a term).
    augment_strength: of ``Photometric`` (1: the paper's probabilities).
    """

    name = "anyup_crops"

    def __init__(self, num_crops: int = 4, crop_weight: float = 1.0, consistency_weight: float = 0.1,
                 input_weight: float = 0.1, augment_strength: float = 1.0) -> None:
        super().__init__()
        if num_crops < 0:
            raise ValueError(f"objective.num_crops must be >= 0; got {num_crops}")
        weights = {"crop_weight": crop_weight, "consistency_weight": consistency_weight, "input_weight": input_weight}
        for key, value in weights.items():
            if value < 0:
                raise ValueError(f"objective.{key} must be >= 0; got {value}")
        self.num_crops, self.crop_weight = num_crops, crop_weight
        self.consistency_weight, self.input_weight = consistency_weight, input_weight
        self.augment = Photometric(augment_strength)

    def crop_term(self, backbone: FrozenBackbone, images: torch.Tensor, pred: torch.Tensor,
                  crop_grid: tuple[int, int]) -> torch.Tensor:
        """cosMSE between the prediction's windows and the backbone's tokens on the patch-aligned crops they cover."""
        crops, windows = aligned_crops(images, pred, backbone.patch_size, crop_grid, self.num_crops)
        with torch.no_grad():
            targets = backbone(crops)  # B * K, C, ch, cw
        return cos_mse(windows.float(), targets.float())

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        p = backbone.patch_size
        if height % (2 * p) or width % (2 * p):
            raise ValueError(f"anyup_crops needs data.image_size divisible by 2 x patch size = {2 * p}; got images "
                             f"of {height}x{width}")
        half = (height // 2, width // 2)
        guidance = resize(images, half)
        with torch.no_grad():
            feats = backbone(guidance)  # B, C, h, w
        pred = upsampler(feats, guidance, output_size=(2 * feats.shape[-2], 2 * feats.shape[-1]))  # B, C, 2h, 2w
        losses: dict[str, torch.Tensor] = {}
        total = images.new_zeros((), dtype=torch.float32)
        if self.crop_weight > 0 and self.num_crops > 0:
            losses["loss_crop"] = self.crop_term(backbone, images, pred, tuple(feats.shape[-2:]))
            total = total + self.crop_weight * losses["loss_crop"]
        if self.input_weight > 0:
            losses["loss_input"] = cos_mse(F.adaptive_avg_pool2d(pred.float(), feats.shape[-2:]), feats.float())
            total = total + self.input_weight * losses["loss_input"]
        if self.consistency_weight > 0:
            with torch.no_grad():
                reference = upsampler(feats, guidance, output_size=half)
            augmented = upsampler(feats, resize(self.augment(images), half), output_size=half)
            losses["loss_consistency"] = cos_mse(augmented.float(), reference.float())
            total = total + self.consistency_weight * losses["loss_consistency"]
        losses = {key: value.detach() for key, value in losses.items()}
        losses["loss"] = total
        return losses
