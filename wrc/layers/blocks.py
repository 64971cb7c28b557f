"""Convolutional building blocks shared by the image-guided upsamplers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.conv import conv3x3
from wrc.layers.full_resolution import BAND_PIXELS, full_resolution_stage
from wrc.layers.norm import GroupNorm, eager_cpu_inference, fuses_in_place, group_norm_, is_plain_group_norm
from wrc.ops.moments import group_affine
from wrc.ops.pixel_mlp import pixel_mlp_serves


def group_norm(channels: int, max_groups: int = 16) -> GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides ``channels``.

    Independent of the batch size, unlike BatchNorm (the original WRC trains with batch 4), and identical
    in training and evaluation; accurate on channels-last activations (wrc.layers.norm).
    """
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return GroupNorm(groups, channels)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1, 3x3 (stride), 1x1, each normalised; projected residual when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = in_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), group_norm(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), group_norm(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False), group_norm(out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          group_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # CPU inference: each GroupNorm with its ReLU (and the residual sum) in one pass in place
        if fuses_in_place(x) and self.relus_are_plain():
            return self.fused_forward(x)
        out = self.body(x)
        return out.add_(self.shortcut(x)).relu_()  # in place: the body's last GroupNorm does not need its output

    def relus_are_plain(self) -> bool:
        """Whether the body's activations are plain ReLUs, which ``fused_forward`` applies inside the norms' pass."""
        return all(type(self.body[i]) is nn.ReLU and not self.body[i]._forward_hooks for i in (2, 5))

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same as ``forward`` (up to rounding) with wrc.layers.norm.group_norm_ after each convolution and the 3x3
        convolution by Winograd's algorithm where it pays (wrc.layers.conv)."""
        body = self.body
        y = group_norm_(body[1], body[0](x), relu=True)
        y = group_norm_(body[4], conv3x3(body[3], y), relu=True)
        if isinstance(self.shortcut, nn.Identity):
            return group_norm_(body[7], body[6](y), relu=True, residual=x)
        return group_norm_(body[7], body[6](y), relu=True, residual=self.shortcut[0](x),
                           residual_norm=self.shortcut[1])


class GuidanceEncoder(nn.Module):
    """Image -> guidance features at 2x the token grid and at the token grid, for any patch size.

    Two stride-2 stages reach 1/4 of the image; adaptive max-pooling lands on exactly 2x the token grid
    (the identity for patch 8, a 2x2 max-pool for patch 16, a fractional pool for patch 14); one more
    stride-2 stage gives the token grid.
    """

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 1, bias=False), group_norm(channels), nn.ReLU(inplace=True))
        self.to_quarter = nn.Sequential(Bottleneck(channels, channels, 2), Bottleneck(channels, channels),
                                        Bottleneck(channels, channels, 2), Bottleneck(channels, channels))
        self.to_grid = nn.Sequential(Bottleneck(channels, channels, 2), Bottleneck(channels, channels))

    def forward(self, image: torch.Tensor, grid: tuple[int, int], mean: torch.Tensor | None = None,
                std: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` normalised, or raw with the (1, 3, 1, 1) ``mean`` and ``std`` of its normalisation, which
        are then folded into the stem (``folded_stem``, or the banded stage's: the same result without the
        full-size passes).

        Inference on the CPU computes the full-resolution layers in row bands (``full_resolution_stage``: the
        same result without a full-resolution map)."""
        folds = self.folds_stem_norms()
        if mean is not None and std is not None and not folds:
            image, mean, std = (image - mean) / std, None, None
        if self.stage_in_bands(image):
            quarter = self.to_quarter[1:](full_resolution_stage(self.stem, self.to_quarter[0], image, mean=mean,
                                                                std=std))
        else:
            stem = self.stem(image) if mean is None or std is None else folded_stem(self.stem, image, mean, std)
            quarter = self.to_quarter(stem)  # B, k, H/4, W/4
        guide_2x = F.adaptive_max_pool2d(quarter, (2 * grid[0], 2 * grid[1]))  # B, k, 2h, 2w
        guide_1x = self.to_grid(guide_2x)  # B, k, h, w
        if guide_1x.shape[-2:] != tuple(grid):  # odd 2x sizes cannot happen; kept exact for safety
            guide_1x = F.adaptive_avg_pool2d(guide_1x, grid)
        return guide_2x, guide_1x

    def folds_stem_norms(self) -> bool:
        """Whether the stem's and the first block's full-resolution norms are plain GroupNorms, which
        ``folded_stem`` and ``full_resolution_stage`` fold into the convolutions rather than call."""
        block = self.to_quarter[0]
        norms = (self.stem[1], block.body[1], block.body[4], block.body[7], block.shortcut[1])
        return all(is_plain_group_norm(norm) for norm in norms)

    def stage_in_bands(self, image: torch.Tensor) -> bool:
        """Whether ``forward`` computes the full-resolution layers with ``full_resolution_stage`` (which can also
        fold the image's normalisation into the stem): plain norms to fold and an image that ``runs_in_bands``."""
        return self.folds_stem_norms() and self.runs_in_bands(image)

    @staticmethod
    def runs_in_bands(image: torch.Tensor) -> bool:
        """Eager CPU inference in float32/64 on an image of more than one band, with torch_wrc's per-pixel kernel:
        where the bands pay off (without the kernel its reference would make whole maps) and the in-place band
        arithmetic is safe (no autograd, no tracing, no autocast)."""
        return (eager_cpu_inference(image) and image.shape[-2] * image.shape[-1] > BAND_PIXELS
                and pixel_mlp_serves(image))


def folded_stem(stem: nn.Sequential, image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """relu(GroupNorm(conv1x1((image - mean) / std))) as one per-sample 1x1 map + relu, the same up to rounding.

    The conv is affine in the pixels, so each output channel's mean and variance follow from the image's mean
    (3,) and covariance (3, 3) per sample: GroupNorm's statistics without a pass over the k-channel map, and
    its affine folded into the conv weights. At 448 this saves the normalisation passes over the image and a
    GroupNorm over a (k, 448, 448) map, the largest in the network. Statistics in fp64 (sums over H W pixels).
    """
    conv, norm = stem[0], stem[1]
    b, _, height, width = image.shape
    groups, eps, k = norm.num_groups, norm.eps, conv.out_channels
    with torch.autocast(image.device.type, enabled=False):
        weight = conv.weight.view(k, 3).double() / std.view(1, 3).double()  # acts on the raw image
        bias = -(weight @ mean.view(3).double())  # k
        pixels = image.double().permute(0, 2, 3, 1).reshape(b, height * width, 3)  # a view when channels-last
        mu = pixels.mean(dim=1)  # b, 3
        centred = pixels - mu[:, None]
        cov = centred.transpose(1, 2) @ centred / (height * width)  # b, 3, 3 (population, as GroupNorm)
        channel_mean = mu @ weight.t() + bias  # b, k
        channel_var = torch.einsum("ci,bij,cj->bc", weight, cov, weight)  # b, k
        scale, shift = group_affine(channel_mean, channel_var, groups, norm.weight, norm.bias, eps, torch.float64)
        # applied to the centred image (conv(image - mu) = conv(image) - channel_mean), so that no large shift
        # cancels a large product in fp32
        shift = shift + channel_mean * scale
        dtype = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
        weight_b = (scale.reshape(b, k, 1) * weight).to(dtype)  # b, k, 3
        shift_b = shift.reshape(b, k, 1).to(dtype)
        image = image.to(dtype) - mu.to(dtype).view(b, 3, 1, 1)  # a pass over 3 channels, not k
        if image.shape[0] == 1 and not torch.compiler.is_compiling():  # the fastest on the CPU: one 1x1 conv
            return F.conv2d(image, weight_b[0, :, :, None, None], shift_b[0, :, 0]).relu_()
        # any batch (and traced graphs: no loop over a dynamic batch): a batched matmul, the shift as a fourth
        # input channel of ones (baddbmm would first copy the broadcast shift into the output)
        x = image.permute(0, 2, 3, 1).reshape(b, height * width, 3)
        x = torch.cat([x, x.new_ones(b, height * width, 1)], dim=2)
        out = torch.bmm(x, torch.cat([weight_b, shift_b], dim=2).transpose(1, 2))  # b, H W, k: channels-last
    return out.view(b, height, width, k).permute(0, 3, 1, 2).relu_()


def half_pixel_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear upsampling with half-pixel centres (align_corners=False): the prior's required geometry."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def fused_width(in_channels: int, image_channels: int) -> int:
    """Width of the fused features inside the guided networks: (C + k) / 2 rounded up to a multiple of 8."""
    return int(math.ceil((in_channels + image_channels) / 2 / 8) * 8)
