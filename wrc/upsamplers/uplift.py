"""UPLiFT: an iterated 2x upsampler with a local attender (Walmer, Suri, Aggarwal, Shrivastava; CVPR 2026;
arXiv 2601.17950).

A convolutional image encoder (five SingleConv groups, all at full resolution) runs once on the guidance, resized
to S pixels per token, S the power of two at or above the patch size (16 for patch 14: the 16/14 pre-scale, 448 ->
512 px, so that 2^k steps land on whole pixels). One weight-shared decoder step then doubles the grid, as often
as needed:

1. concatenate the features x (C, s x s) with the last encoder map nearest-subsampled to s x s; a DoubleConv to
   64 channels (its residual: the first 64 input channels);
2. a 2x2 stride-2 transposed convolution plus a bilinear (align_corners) 2x residual;
3. concatenate the second-to-last encoder map nearest-subsampled to 2s x 2s; a DoubleConv to the guide g;
4. the Local Attender: logits conv1x1(g) + g[:17], a softmax over 17 fixed offsets around each pixel's parent,
   applied to the step's *input* x: every step's output is a convex combination of its input's tokens.

So the output stays in the backbone's space. Blocks: SingleConv = conv3x3 (no bias), BN, ReLU, conv1x1 (bias);
DoubleConv = (conv3x3, BN, ReLU) x 2, conv1x1 (bias); both add their input zero-padded or truncated to their
width. 789,521 parameters for C = 384 (modern_peers.md section 5). Any output size: the fewest steps that reach
it on both axes, then one (antialiased when shrinking) bilinear resize, as the original's final resize (448 px
from patch 14: four steps to 512, then 448).

Fast mode (``fast=True``, evaluation only; training needs BatchNorm's batch statistics): each BatchNorm folded
into the convolution before it, activations in channels_last, and optionally (``compile_step``) the decoder step
through torch.compile; outputs equal the normal mode's to float32 rounding. The original's fused Triton attender
is not reproduced (``local_softmax_pool`` accumulates one offset at a time, its low-memory path).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.guidance import GuidanceNormalize
from wrc.layers.local_attention import UPLIFT_OFFSETS, local_softmax_pool
from wrc.upsamplers.base import Upsampler, register_upsampler, resize


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """UPLiFT's "auto" residual: the first ``channels`` channels of x, zero-padded when x has fewer."""
    if x.shape[1] >= channels:
        return x[:, :channels]
    return F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))


class ConvBNReLU(nn.Module):
    """conv3x3 (no bias), BatchNorm, ReLU; with ``fold`` set and in eval mode, one convolution with the BatchNorm
    folded into its weight and bias (the same function up to rounding)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.fold = False

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the convolution that equals conv then BatchNorm with its running statistics."""
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        return self.conv.weight * scale.view(-1, 1, 1, 1), self.bn.bias - self.bn.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold and not self.training:
            weight, bias = self.folded()
            return F.relu(F.conv2d(x, weight, bias, padding=1))
        return F.relu(self.bn(self.conv(x)))


class SingleConv(nn.Module):
    """ConvBNReLU, conv1x1 (bias), plus the input matched to the output width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.body = nn.Sequential(ConvBNReLU(in_channels, out_channels), nn.Conv2d(out_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + match_channels(x, self.out_channels)


class DoubleConv(SingleConv):
    """Two ConvBNReLU, conv1x1 (bias), plus the input matched to the output width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.body = nn.Sequential(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels),
                                  nn.Conv2d(out_channels, out_channels, 1))


def nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resampling (a subsampling of the full-resolution encoder maps); identity at the same size."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="nearest")


def steps_to_reach(grid: tuple[int, int], size: tuple[int, int]) -> int:
    """The fewest 2x steps after which the grid covers ``size`` on both axes."""
    steps = 0
    while any(g << steps < n for g, n in zip(grid, size, strict=True)):
        steps += 1
    return steps


@register_upsampler
class UPLiFT(Upsampler):
    """UPLiFT upsampler: a full-resolution image encoder, a weight-shared 2x decoder step, a local attender.

    Built for one channel count (the decoder's first convolution reads C + 128 channels).

    Args:
        in_channels: backbone channels C.
        patch_size: backbone patch size P; the encoder runs at S = 2^ceil(log2 P) pixels per token.
        encoder_channels: widths of the SingleConv groups (the last two feed the decoder).
        decoder_channels: width of the decoder and of the guide g (at least the 17 attender offsets).
        fast: fold BatchNorm and use channels_last in eval mode (outputs equal up to rounding).
        compile_step: with ``fast``, run the decoder step through torch.compile.

    Shape:
        features (B, C, h, w), image (B, 3, H, W) -> (B, C, H', W') for any H', W'.
    """

    name = "uplift"

    def __init__(self, in_channels: int, patch_size: int, *,
                 encoder_channels: Sequence[int] = (16, 32, 64, 128, 128), decoder_channels: int = 64,
                 fast: bool = False, compile_step: bool = False) -> None:
        super().__init__(in_channels, patch_size)
        widths = [int(c) for c in encoder_channels]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"encoder_channels must be at least two positive widths; got {list(encoder_channels)}")
        if decoder_channels < len(UPLIFT_OFFSETS):
            raise ValueError(f"decoder_channels must be >= {len(UPLIFT_OFFSETS)} (the attender reads the guide's first "
                             f"{len(UPLIFT_OFFSETS)} channels as a residual); got {decoder_channels}")
        self.pixels_per_token = 2 ** math.ceil(math.log2(patch_size))
        self.normalize = GuidanceNormalize()
        self.encoder = nn.Sequential(*(SingleConv(a, b) for a, b in zip([3, *widths[:-1]], widths, strict=True)))
        d = decoder_channels
        self.decode_in = DoubleConv(in_channels + widths[-1], d)
        self.decode_up = nn.ConvTranspose2d(d, d, kernel_size=2, stride=2)
        self.decode_out = DoubleConv(d + widths[-2], d)
        self.attender = nn.Conv2d(d, len(UPLIFT_OFFSETS), 1)
        self.compile_step = compile_step
        self._compiled: Callable[..., torch.Tensor] | None = None
        self.fast = fast

    @property
    def fast(self) -> bool:
        return self._fast

    @fast.setter
    def fast(self, value: bool) -> None:
        self._fast = bool(value)
        for module in self.modules():
            if isinstance(module, ConvBNReLU):
                module.fold = self._fast

    def encode(self, image: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The last two encoder maps at S pixels per token: (B, 3, H, W) -> (B, E3, Sh, Sw), (B, E4, Sh, Sw)."""
        x = self.normalize(resize(image, (grid[0] * self.pixels_per_token, grid[1] * self.pixels_per_token)))
        if self._fast_now():
            x = x.contiguous(memory_format=torch.channels_last)
        penultimate = self.encoder[:-1](x)
        return penultimate, self.encoder[-1](penultimate)

    def step(self, x: torch.Tensor, enc3: torch.Tensor, enc4: torch.Tensor) -> torch.Tensor:
        """One 2x step: (B, C, s, s') -> (B, C, 2s, 2s'), a convex combination of x's tokens per pixel."""
        s = tuple(x.shape[-2:])
        big = (2 * s[0], 2 * s[1])
        g = self.decode_in(torch.cat([x, nearest(enc4, s)], dim=1))  # B, D, s, s'
        g = self.decode_up(g) + F.interpolate(g, size=big, mode="bilinear", align_corners=True)  # B, D, 2s, 2s'
        g = self.decode_out(torch.cat([g, nearest(enc3, big)], dim=1))  # B, D, 2s, 2s': the guide
        logits = self.attender(g) + g[:, :len(UPLIFT_OFFSETS)]  # B, 17, 2s, 2s'
        return local_softmax_pool(logits, x)

    def iterate(self, features: torch.Tensor, image: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Every step's output for ``steps`` steps (the encoder runs once): [(B, C, 2h, 2w), (B, C, 4h, 4w), ...]."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0; got {steps}")
        enc3, enc4 = self.encode(image, tuple(features.shape[-2:]))
        step = self._step_function()
        outputs, x = [], features  # the attender's values keep the features' precision (bf16 convolutions aside)
        if self._fast_now():
            x = x.contiguous(memory_format=torch.channels_last)
        for _ in range(steps):
            x = step(x, enc3, enc4)
            outputs.append(x)
        return [out.contiguous() for out in outputs]

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        steps = steps_to_reach(tuple(features.shape[-2:]), size)
        out = self.iterate(features, image, steps)[-1] if steps else features
        return resize(out, size)

    def _fast_now(self) -> bool:
        return self._fast and not self.training

    def _step_function(self) -> Callable[..., torch.Tensor]:
        if not (self._fast_now() and self.compile_step):
            return self.step
        if self._compiled is None:
            self._compiled = torch.compile(self.step, dynamic=True)
        return self._compiled

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pixels_per_token={self.pixels_per_token}, fast={self._fast}"
