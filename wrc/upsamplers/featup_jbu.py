"""FeatUp-JBU: a stack of learned joint bilateral upsamplers (Fu, Hamilton et al., ICLR 2024).

Each layer doubles the grid. Its per-pixel (2r + 1)^2 filter is a joint bilateral kernel: a range
term, softmax over the window of temperature-scaled dot products between learned keys of the
guidance image (an MLP 3 -> 32 -> 32), times a learned isotropic spatial Gaussian, normalised to sum
to one; then (optionally) a small learned correction 0.1 * MLP([kernel; guidance]). The filter is
applied by the adaptive convolution (wrc.ops.adaptive_conv) to bicubically 2x-upsampled,
reflect-padded features. After the last layer a residual 1x1 convolution mixes channels.

Presets (``preset="paper" | "antialiased"``; each flag can also be set on its own). The default is "paper", the
original's behaviour: on the synthetic benchmark's three seeds (benchmarks/results/synthetic/seeds.md, 8-pixel
patches, so every guidance ratio is an integer and no final resize runs) it is level with "antialiased" on the
field's cosine, rel_l2 and probe mIoU and ahead by more than twice the spread on cosine_2x and DAVIS J&F: at
integer ratios average pooling is a box filter, sharper than the antialiased triangle, and the range kernel
sees the sharper edges. The antialiased flags remain for patch 14, where pooling is irregular (below); no
measurement here shows that they help there.
- ``guidance_resize``: how the image is brought to each layer's grid. "adaptive_avg" (paper) is adaptive
  average pooling: when the ratio is not an integer its windows alternate between widths, and for patch 14
  it *enlarges* the last guidance (224 -> 256, each pixel a copy or a mean of two), a blur that changes from
  pixel to pixel. "bilinear" (antialiased) is antialiased bilinear, one triangle filter of the same shape at
  every output pixel.
- ``final_antialias``: the resize from the stack's 2^L grid to the requested size (patch 14: 256 -> 224).
  False (paper) samples bilinearly, which aliases; True (antialiased) antialiases when shrinking.

Differences from the original that no preset undoes: range logits are formed shift by shift, never
unfolding the keys (that unfold alone is 49 x 32 values per pixel, the outputs are equal); the fused kernel
gives every tap its gradient on every device; a request smaller than 2^L tokens uses fewer layers.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.guidance import GuidanceNormalize
from wrc.ops.adaptive_conv import adaptive_conv
from wrc.ops.padding import pad2d
from wrc.upsamplers.base import register_upsampler, resize
from wrc.upsamplers.stack import StackedUpsampler

GUIDANCE_RESIZES = ("bilinear", "adaptive_avg")
PRESETS: dict[str, dict[str, object]] = {  # the flags each preset sets (an explicit flag wins)
    "paper": {"guidance_resize": "adaptive_avg", "final_antialias": False},
    "antialiased": {"guidance_resize": "bilinear", "final_antialias": True},
}
RENAMED_PRESETS = {"default": "antialiased"}  # the default before 2026-12-02: checkpoints saved with it still load

log = logging.getLogger("wrc")


class JointBilateralLayer(nn.Module):
    """One learned JBU 2x step; its parameters do not depend on the feature channels.

    Args:
        radius: window radius r (a (2r + 1)^2 window; FeatUp: 3, i.e. 49 taps).
        key_dim: width of the range MLP.
        dropout: Dropout2d inside the MLPs (active in train mode only).
        kernel_fixup: add FeatUp's learned correction 0.1 * MLP([kernel; guidance]); the kernel is then no
            longer normalised or positive. False keeps a pure (normalised, positive) bilateral kernel.
    """

    def __init__(self, radius: int = 3, key_dim: int = 32, dropout: float = 0.1, kernel_fixup: bool = True) -> None:
        super().__init__()
        if radius < 1:
            raise ValueError(f"radius must be >= 1 (a window of (2r + 1)^2 taps); got {radius}")
        self.radius, self.diameter = radius, 2 * radius + 1
        taps = self.diameter**2
        self.range_mlp = nn.Sequential(nn.Conv2d(3, key_dim, 1), nn.GELU(), nn.Dropout2d(dropout),
                                       nn.Conv2d(key_dim, key_dim, 1))
        self.range_temperature = nn.Parameter(torch.zeros(()))  # inverse temperature exp(t), starts at 1
        self.sigma_spatial = nn.Parameter(torch.ones(()))  # on the [-1, 1] window grid (r pixels per unit)
        self.fixup = (nn.Sequential(nn.Conv2d(taps + 3, taps, 1), nn.GELU(), nn.Dropout2d(dropout),
                                    nn.Conv2d(taps, taps, 1)) if kernel_fixup else None)
        grid = torch.linspace(-1, 1, self.diameter)
        dist_sq = grid[:, None].square() + grid[None, :].square()
        self.register_buffer("dist_sq", dist_sq.reshape(1, taps, 1, 1), persistent=False)

    def bilateral_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """(B, (2r+1)^2, H, W): positive, sums to one over the taps at every pixel (tap t = i * d + j)."""
        keys = self.range_mlp(guidance)
        height, width = keys.shape[-2:]
        padded = pad2d(keys, self.radius, "reflect")
        logits = torch.stack([(keys * padded[..., i : i + height, j : j + width]).sum(dim=1)
                              for i in range(self.diameter) for j in range(self.diameter)], dim=1)
        range_kernel = torch.softmax(logits * self.range_temperature.exp().clamp(1e-4, 1e4), dim=1)
        spatial = torch.exp(-self.dist_sq / (2 * self.sigma_spatial.square()))
        kernel = range_kernel * spatial
        return kernel / kernel.sum(dim=1, keepdim=True).clamp_min(1e-7)

    def forward(self, features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """features (B, C, h, w), guidance (B, 3, 2h, 2w), normalised -> (B, C, 2h, 2w)."""
        height, width = guidance.shape[-2:]
        kernel = self.bilateral_kernel(guidance)
        if self.fixup is not None:
            kernel = kernel + 0.1 * self.fixup(torch.cat([kernel, guidance], dim=1))
        up = F.interpolate(features, size=(height, width), mode="bicubic", align_corners=False)
        filters = kernel.permute(0, 2, 3, 1).reshape(kernel.shape[0], height, width, self.diameter, self.diameter)
        return adaptive_conv(pad2d(up, self.radius, "reflect"), filters.to(up.dtype).contiguous())


@register_upsampler
class FeatUpJBU(StackedUpsampler):
    """FeatUp's JBU stack: ``num_layers`` 2x layers (4 = 16x) and a residual channel-mixing refinement.

    Args:
        num_layers: number of 2x layers (the stack's largest factor is 2^num_layers).
        radius, key_dim, dropout, kernel_fixup: of every JointBilateralLayer.
        refine: the final out + 0.1 * Conv1x1(Dropout2d(out)) (C^2 + C parameters).
        refine_dropout: its dropout.
        preset: "paper" (the original's behaviour, the default: see the module docstring for the numbers
            behind it) or "antialiased": the values of the flags below that are left at None.
        guidance_resize: "bilinear" (antialiased) or "adaptive_avg" (adaptive average pooling).
        final_antialias: antialias the final resize to the requested size when it shrinks.

    172,772 parameters for C = 384 with the defaults (24,932 in the four layers).
    """

    name = "featup_jbu"

    def __init__(self, in_channels: int, patch_size: int, *, num_layers: int = 4, radius: int = 3,
                 key_dim: int = 32, dropout: float = 0.1, kernel_fixup: bool = True, refine: bool = True,
                 refine_dropout: float = 0.2, preset: str = "paper", guidance_resize: str | None = None,
                 final_antialias: bool | None = None) -> None:
        super().__init__(in_channels, patch_size)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        if preset in RENAMED_PRESETS:
            log.warning("featup_jbu: preset=%r is now called %r (the default is 'paper'); loading it as %r", preset,
                        RENAMED_PRESETS[preset], RENAMED_PRESETS[preset])
            preset = RENAMED_PRESETS[preset]
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r}; expected one of {tuple(PRESETS)}")
        flags = {"guidance_resize": guidance_resize, "final_antialias": final_antialias}
        flags = PRESETS[preset] | {key: value for key, value in flags.items() if value is not None}
        if flags["guidance_resize"] not in GUIDANCE_RESIZES:
            raise ValueError(f"guidance_resize={flags['guidance_resize']!r}; expected one of {GUIDANCE_RESIZES}")
        self.preset, self.guidance_resize = preset, str(flags["guidance_resize"])
        self.final_antialias = bool(flags["final_antialias"])
        self.normalize = GuidanceNormalize()
        self.layers = nn.ModuleList(JointBilateralLayer(radius, key_dim, dropout, kernel_fixup)
                                    for _ in range(num_layers))
        self.refine = (nn.Sequential(nn.Dropout2d(refine_dropout), nn.Conv2d(in_channels, in_channels, 1))
                       if refine else None)

    def guidance(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The normalised guidance image on a layer's grid (both resizes are linear and keep constants, so
        normalising before or after is the same)."""
        normalized = self.normalize(image)
        if self.guidance_resize == "adaptive_avg":
            return F.adaptive_avg_pool2d(normalized, size)
        return resize(normalized, size)

    def step(self, index: int, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        size = (2 * features.shape[-2], 2 * features.shape[-1])
        return self.layers[index](features, self.guidance(image, size))

    def finish(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.refine is None else features + 0.1 * self.refine(features)

    def stack_size(self, grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
        """The grid the layers reach for a request of ``size`` (StackedUpsampler's rule: double while smaller)."""
        height, width = grid
        for _ in range(len(self.layers)):
            if height >= size[0] and width >= size[1]:
                break
            height, width = 2 * height, 2 * width
        return height, width

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        if self.final_antialias:
            return super().upsample_to(features, image, size, backbone)
        out = super().upsample_to(features, image, self.stack_size(features.shape[-2:], size), backbone)
        if tuple(out.shape[-2:]) == tuple(size):
            return out
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, preset={self.preset}, guidance_resize={self.guidance_resize}, "
                f"final_antialias={self.final_antialias}")
