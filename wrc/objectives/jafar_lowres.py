"""JAFAR's low-to-lower-resolution objective (Couairon et al., 2025; shared/reference/modern_peers.md section 1.2).

The target is the backbone on the training image I (448 px: 32 x 32 tokens at patch 14). The input is the
backbone on I downscaled by one factor s ~ U(0.25, 0.5) per batch, each side rounded to a multiple of the patch
(112..224 px: 8..16 tokens), and the guidance is I halved (224 px). So training sees 2-4x ratios:

    L = cosMSE(U(F(I_s), I/2 -> 32 x 32), F(I))
        + 0.1 cosMSE(U(F(I), aug(I/2) -> 224 x 224), stop_grad(U(F(I), I/2 -> 224 x 224)))

The second term asks the 7x map from the target features to ignore blur and noise in the guidance. ``aug``
(``BlurNoise``): Gaussian blur (kernel 5, sigma 1) with p = 0.5, noise 0.02 N(0, 1) with p = 0.3, then a clamp
to [0, 1]. The original applies all three to the ImageNet-normalised image, so the clamp clips every value below
the mean colour; ``clamp="normalized"`` (the default) reproduces that exactly (the result is mapped back to
[0, 1] pixels, which the upsampler normalises again), ``clamp="unit"`` applies the same steps to the [0, 1]
image instead. Each image draws its own blur and noise decisions. Every resize is antialiased bilinear.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from wrc.backbone import FrozenBackbone
from wrc.layers.guidance import IMAGENET_MEAN, IMAGENET_STD
from wrc.losses import cos_mse
from wrc.objectives.base import Objective, register_objective
from wrc.upsamplers.base import Upsampler, resize

CLAMPS = ("normalized", "unit")


def check_probability(name: str, p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"objective.augment.{name} must be a probability in [0, 1]; got {p}")


class BlurNoise(nn.Module):
    """JAFAR's guidance augmentation of [0, 1] images: blur, noise and clamp, per image (module docstring).

    Args:
        blur_p, blur_kernel, blur_sigma: probability, kernel side and sigma of the Gaussian blur.
        noise_p, noise_std: probability and standard deviation of the additive Gaussian noise.
        clamp: "normalized" (the original: blur, noise and clamp act on the ImageNet-normalised image) or "unit".
    """

    def __init__(self, blur_p: float = 0.5, blur_kernel: int = 5, blur_sigma: float = 1.0, noise_p: float = 0.3,
                 noise_std: float = 0.02, clamp: str = "normalized") -> None:
        super().__init__()
        check_probability("blur_p", blur_p)
        check_probability("noise_p", noise_p)
        if blur_kernel < 1 or blur_kernel % 2 == 0 or blur_sigma <= 0 or noise_std < 0:
            raise ValueError("objective.augment needs an odd blur_kernel >= 1, blur_sigma > 0 and noise_std >= 0; "
                             f"got {blur_kernel}, {blur_sigma}, {noise_std}")
        if clamp not in CLAMPS:
            raise ValueError(f"objective.augment.clamp={clamp!r}; expected one of {CLAMPS}")
        self.blur_p, self.blur_kernel, self.blur_sigma = blur_p, blur_kernel, blur_sigma
        self.noise_p, self.noise_std, self.clamp = noise_p, noise_std, clamp
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        normalized = self.clamp == "normalized"
        x = (image - self.mean) / self.std if normalized else image
        blur = (torch.rand(b, 1, 1, 1) < self.blur_p).to(x.device)
        blurred = TF.gaussian_blur(x, [self.blur_kernel] * 2, [self.blur_sigma])
        x = torch.where(blur, blurred, x)
        noisy = (torch.rand(b, 1, 1, 1) < self.noise_p).to(x)
        x = (x + noisy * self.noise_std * torch.randn(x.shape).to(x)).clamp(0, 1)  # CPU draws: resumable
        return x * self.std + self.mean if normalized else x


@register_objective
class JafarLowres(Objective):
    """Args:
    scale_range: the input's downscale factor, drawn once per batch (JAFAR: 0.25 to 0.5).
    guidance_scale: the guidance image's size relative to the training image (JAFAR: 0.5, 224 of 448 px).
    main_weight: weight of the low-to-lower-resolution term (1).
    consistency_weight: weight of the augmented-guidance consistency term (JAFAR: 0.1; 0 skips it).
    augment: keyword arguments of ``BlurNoise``.
    """

    name = "jafar_lowres"

    def __init__(self, scale_range: tuple[float, float] = (0.25, 0.5), guidance_scale: float = 0.5,
                 main_weight: float = 1.0, consistency_weight: float = 0.1, augment: dict | None = None) -> None:
        super().__init__()
        low, high = (float(s) for s in scale_range)
        if not 0 < low <= high <= 1:
            raise ValueError(f"objective.scale_range must be 0 < low <= high <= 1; got {scale_range}")
        if not 0 < guidance_scale <= 1:
            raise ValueError(f"objective.guidance_scale must be in (0, 1]; got {guidance_scale}")
        if min(main_weight, consistency_weight) < 0:
            raise ValueError(f"objective.main_weight and consistency_weight must be >= 0; got {main_weight}, "
                             f"{consistency_weight}")
        self.scale_range, self.guidance_scale = (low, high), guidance_scale
        self.main_weight, self.consistency_weight = main_weight, consistency_weight
        self.augment = BlurNoise(**(augment or {}))

    def input_size(self, size: tuple[int, int], patch: int) -> tuple[int, int]:
        """The downscaled input: one factor per batch, each side a multiple of the patch (at least one patch)."""
        factor = float(torch.empty(()).uniform_(*self.scale_range))
        return tuple(max(patch, round(side * factor / patch) * patch) for side in size)

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        guidance = resize(images, tuple(max(1, round(side * self.guidance_scale)) for side in (height, width)))
        with torch.no_grad():
            target = backbone(images)  # B, C, h, w
            low_feats = backbone(resize(images, self.input_size((height, width), backbone.patch_size)))
        losses: dict[str, torch.Tensor] = {}
        total = images.new_zeros((), dtype=torch.float32)
        if self.main_weight > 0:
            pred = upsampler(low_feats, guidance, output_size=target.shape[-2:])
            losses["loss_main"] = cos_mse(pred.float(), target.float())
            total = total + self.main_weight * losses["loss_main"]
        if self.consistency_weight > 0:
            size = tuple(guidance.shape[-2:])
            with torch.no_grad():
                reference = upsampler(target, guidance, output_size=size)
            augmented = upsampler(target, self.augment(guidance), output_size=size)
            losses["loss_consistency"] = cos_mse(augmented.float(), reference.float())
            total = total + self.consistency_weight * losses["loss_consistency"]
        losses = {key: value.detach() for key, value in losses.items()}
        losses["loss"] = total
        return losses
