"""The oracle backbone: a deterministic function of the image whose per-pixel output is the ground truth.

``OracleBackbone.dense(image)`` is the high-resolution feature field: at every pixel, a fixed random
embedding of the pixel's class plus a fixed random linear map of its chromaticity,

    field(x) = E p(x) + G (chroma(x) - 1/3),    p(x) = probabilities of the four classes of scenes.py.

The class is read from the stripe texture of the whole region the pixel belongs to, found by its
chromaticity (exactly constant within a region of a generated scene, distinct between regions). Per
chromaticity bin: the luminance contrast (std / mean) says textured or flat, and the share of the
luminance steps between same-bin neighbours that runs along y says horizontal stripes (share near 1),
vertical (near 0) or plaid (in between). Both statistics are blind to zoom, so the oracle reads a
region the same way in the crops and zooms of training objectives. So, like a semantic backbone,
the oracle knows what a region is from its whole extent, and its field is sharp at region edges; one
pixel, or a patch average, cannot tell the class. On a generated scene at its own size the decoded
classes equal the generator's class map (tests/test_synthetic.py).

``forward(image)`` is what an upsampler sees: the field averaged over each P x P patch, then mixed
with the 3 x 3 neighbouring patches (weight ``mixing``), as attention leaks neighbours into ViT tokens.
It accepts any image (crops, zooms, flips and colour jitter of the objectives), like a real backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.synthetic.scenes import CHROMA_GAP, CLASSES

CHROMA_BIN = CHROMA_GAP / 4  # regions of a scene are >= 4 bins apart, so no two share a bin
CONTRAST_THRESHOLD, CONTRAST_SOFTNESS = 0.06, 0.01  # std / mean of luminance: textures >= 0.15, flat 0
ORIENTATION_THRESHOLD, ORIENTATION_SOFTNESS = 0.2, 0.025  # share of luminance steps along y: plaid 0.35-0.65


def chromaticity(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 2, H, W): (r, g) / (r + g + b), blind to brightness and so to the stripe texture."""
    return image[:, :2] / image.sum(dim=1, keepdim=True).clamp_min(3e-4)


class OracleBackbone(nn.Module):
    """Args:
    channels: feature channels C of the field.
    patch_size: P, the side of the averaged patches.
    mixing: weight of the 3 x 3 neighbourhood mean in each token (0 = pure patch averages).
    colour_gain: scale of the chromaticity term against the unit-norm class embeddings.
    seed: seed of the embeddings E (C x 4) and G (C x 2).
    """

    def __init__(self, channels: int = 32, patch_size: int = 8, mixing: float = 0.25, colour_gain: float = 2.0,
                 seed: int = 0) -> None:
        super().__init__()
        if channels < len(CLASSES):
            raise ValueError(f"channels must be >= {len(CLASSES)} (one direction per class); got {channels}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be a positive number of pixels; got {patch_size}")
        if not 0 <= mixing < 1:
            raise ValueError(f"mixing must be in [0, 1); got {mixing}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("class_embedding", F.normalize(torch.randn(channels, len(CLASSES), generator=gen), dim=0))
        self.register_buffer("colour_map", colour_gain * torch.randn(channels, 2, generator=gen) / 2**0.5)
        self.name, self.embed_dim, self.patch_size = "synthetic_oracle", channels, patch_size
        self.mixing, self.colour_gain, self.seed = mixing, colour_gain, seed
        self.requires_grad_(False)

    def spec(self) -> dict:
        return {"name": self.name, "channels": self.embed_dim, "patch_size": self.patch_size, "mixing": self.mixing,
                "colour_gain": self.colour_gain, "seed": self.seed}

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def class_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 4, H, W): flat, horizontal, vertical, plaid, from the region-wide texture."""
        b, _, h, w = image.shape
        luminance = image.mean(dim=1).clamp_min(1e-4)  # B, H, W
        chroma = chromaticity(image)
        bins_per_axis = int(1 / CHROMA_BIN) + 1
        cells = (chroma / CHROMA_BIN).floor().clamp(0, bins_per_axis - 1).long()
        region = cells[:, 0] * bins_per_axis + cells[:, 1] + bins_per_axis**2 * torch.arange(b, device=image.device)[
            :, None, None]  # B, H, W: one id per (image, chromaticity bin)
        sums = torch.zeros(4, b * bins_per_axis**2, device=image.device)  # L, L^2, |dL/dy|, |dL/dx| per bin
        counts = torch.zeros(3, b * bins_per_axis**2, device=image.device)
        sums[0].index_add_(0, region.flatten(), luminance.flatten())
        sums[1].index_add_(0, region.flatten(), luminance.flatten().square())
        counts[0].index_add_(0, region.flatten(), torch.ones_like(luminance.flatten()))
        for row, dim in ((2, 1), (3, 2)):  # steps between same-region neighbours along y, then x
            n = luminance.shape[dim] - 1
            same = region.narrow(dim, 0, n) == region.narrow(dim, 1, n)
            ids = region.narrow(dim, 0, n)[same]
            step = (luminance.narrow(dim, 1, n) - luminance.narrow(dim, 0, n)).abs()[same]
            sums[row].index_add_(0, ids, step)
            counts[row - 1].index_add_(0, ids, torch.ones_like(step))
        mean = sums[0] / counts[0].clamp_min(1)
        contrast = (sums[1] / counts[0].clamp_min(1) - mean.square()).clamp_min(0).sqrt() / mean.clamp_min(1e-4)
        step_y, step_x = sums[2] / counts[1].clamp_min(1), sums[3] / counts[2].clamp_min(1)
        along_y = step_y / (step_y + step_x).clamp_min(1e-8)  # 1: horizontal stripes, 0: vertical, ~0.5: plaid
        textured = torch.sigmoid((contrast - CONTRAST_THRESHOLD) / CONTRAST_SOFTNESS)[region]
        horizontal = torch.sigmoid((along_y - (1 - ORIENTATION_THRESHOLD)) / ORIENTATION_SOFTNESS)[region]
        vertical = torch.sigmoid((ORIENTATION_THRESHOLD - along_y) / ORIENTATION_SOFTNESS)[region]
        return torch.stack([1 - textured, textured * horizontal, textured * vertical,
                            textured * (1 - horizontal - vertical).clamp_min(0)], dim=1)

    @torch.no_grad()
    def dense(self, image: torch.Tensor) -> torch.Tensor:
        """The per-pixel field (B, C, H, W): the ground truth every upsampler aims at."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
        image = image.float()
        probabilities = self.class_probabilities(image)
        return (torch.einsum("ck,bkhw->bchw", self.class_embedding, probabilities)
                + torch.einsum("ck,bkhw->bchw", self.colour_map, chromaticity(image) - 1 / 3))

    @torch.no_grad()
    def forward(self, image: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        """Tokens (B, C, h, w): patch averages of the field (a stride < P overlaps them), mixed with neighbours."""
        p = self.patch_size
        stride = stride or p
        if min(image.shape[-2:]) < p:
            raise ValueError(f"image of {tuple(image.shape[-2:])} pixels is smaller than one {p}x{p} patch")
        tokens = F.avg_pool2d(self.dense(image), p, stride)
        if self.mixing == 0:
            return tokens
        neighbours = F.avg_pool2d(F.pad(tokens, (1, 1, 1, 1), mode="replicate"), 3, 1)
        return (1 - self.mixing) * tokens + self.mixing * neighbours
