"""LiFT: Lightweight Feature Transform for dense ViT descriptors (Suri et al., ECCV 2024).

One step doubles the token grid: a small image branch gives skip features at the token grid and at
2x of it; the tokens are fused with the first, lifted by a 2x2 transposed convolution, fused with
the second by a double 3x3 convolution and projected back to C channels (about 1.2M parameters for
C = 384). Larger factors apply the step again with the guidance image at the new scale.

Unlike the original (patch 8 and 16 only), the image branch lands on exactly 2x the token grid for
any patch size (8, 14, 16, ...) and any image size, by adaptive max-pooling after its two stride-2
convolutions: for patch 16 that is the original 2x2 max-pool, for patch 8 the identity.

Guidance normalisation (``guidance_norm``): here every upsampler normalises its [0, 1] guidance itself, with
ImageNet statistics whatever the backbone, so a trained LiFT does not depend on how its backbone normalises.
The original feeds LiFT the image its backbone sees: ImageNet statistics for DINO, mean = std = 0.5 for the
other backbones; "half" reproduces the latter (what ``python -m wrc.convert --format lift`` sets for a
``--backbone`` whose name does not contain "dino"). The image branch's convolutions carry no bias (the BatchNorm after
each makes one redundant); the converter folds the original's biases into the BatchNorms' running means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.guidance import GuidanceNormalize
from wrc.upsamplers.base import Upsampler, register_upsampler

GUIDANCE_NORMS = ("imagenet", "half")


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


@register_upsampler
class LiFT(Upsampler):
    """LiFT upsampler: 2x per step, image-guided.

    Args:
        in_channels: backbone channels C.
        patch_size: backbone patch size P (the guidance image is resized to P times the token grid).
        image_channels: width of the image branch (32 in the paper).
        guidance_norm: "imagenet" (mean/std of ImageNet, the default and the original's for DINO) or "half"
            (mean = std = 0.5, the original's for non-DINO backbones).

    Shape:
        features (B, C, h, w), image (B, 3, H, W) -> (B, C, 2h, 2w) per step.
    """

    name = "lift"
    scale = 2

    def __init__(self, in_channels: int, patch_size: int, *, image_channels: int = 32,
                 guidance_norm: str = "imagenet") -> None:
        super().__init__(in_channels, patch_size)
        if guidance_norm not in GUIDANCE_NORMS:
            raise ValueError(f"guidance_norm={guidance_norm!r}; expected one of {GUIDANCE_NORMS}")
        c, k = in_channels, image_channels
        fused = c + k
        self.guidance_norm = guidance_norm
        self.normalize = GuidanceNormalize()
        if guidance_norm == "half":
            self.normalize.mean.fill_(0.5)
            self.normalize.std.fill_(0.5)
        self.image_stem = nn.Sequential(conv_bn_relu(3, k, stride=2), conv_bn_relu(k, k, stride=2))  # 1/4 res
        self.image_down = conv_bn_relu(k, k, stride=2)  # 2x token grid -> token grid
        self.up = nn.ConvTranspose2d(fused, fused // 2, kernel_size=2, stride=2)
        self.fuse = nn.Sequential(conv_bn_relu(fused // 2 + k, c // 2), conv_bn_relu(c // 2, c // 2))
        self.head = nn.Conv2d(c // 2, c, kernel_size=1)

    def upsample_step(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        guide_size = (h * self.patch_size, w * self.patch_size)
        if image.shape[-2:] != guide_size:  # the image at the scale of this step's token grid
            image = F.interpolate(image, size=guide_size, mode="bilinear", align_corners=False, antialias=True)
        skip = self.image_stem(self.normalize(image))  # B, k, hP/4, wP/4
        skip_2x = F.adaptive_max_pool2d(skip, (2 * h, 2 * w))  # B, k, 2h, 2w
        skip_1x = self.image_down(skip_2x)  # B, k, h, w
        x = self.up(torch.cat([features, skip_1x], dim=1))  # B, (C+k)/2, 2h, 2w
        x = self.fuse(torch.cat([x, skip_2x], dim=1))  # B, C/2, 2h, 2w
        return self.head(x)  # B, C, 2h, 2w
