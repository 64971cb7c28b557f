"""The guidance encoder's full-resolution stage computed in row bands, for inference.

The stem (1x1 conv, GroupNorm, ReLU) and the first bottleneck's full-resolution half (1x1 conv, GroupNorm, ReLU,
the stride-2 3x3 conv, and the stride-2 1x1 shortcut) are the only layers at the image's own size. Computed
layer by layer they make four or more (B, k, H, W) maps, 25 MB each at 448 x 448 x 32: on the CPU each is fresh
memory from the OS (glibc maps allocations of this size anew), and touching it costs more than the arithmetic
(a 1x1 conv writing fresh memory: 5-7 ms; into reused memory: 1.3 ms). Here no full-resolution map exists: the
stage runs in three passes, each recomputing the cheap layers before it, the last over bands of rows a few MB in
size:

1. the stem's GroupNorm statistics, exact from the image's mean and covariance (the conv is linear);
2. the second GroupNorm's statistics of stem -> 1x1 conv; the strided shortcut conv;
3. per band of output rows (plus one halo row): stem, 1x1 conv, GroupNorm, ReLU, the stride-2 3x3 conv.

Each sample runs on its own, so that each GroupNorm, once its statistics are known, is folded into the conv
before it (scaled weights and a bias). The stem and the 1x1 conv after it are then two 1x1 convolutions with a
ReLU between them, computed per pixel by one torch_wrc kernel (wrc.ops.pixel_mlp) that never stores the stem's
output: in pass 2 it only sums the 1x1 conv's float64 moments over the whole image (and, at the even rows and
columns, writes the shortcut conv's output), in pass 3 it writes the normalised, ReLU'd band, which oneDNN's
stride-2 3x3 conv adds into the stage's output in place (``conv_add_``).

The statistics are as accurate as PyTorch's NCHW kernel (float64 moments, shifted by the sample's first pixel),
so the stage equals the layer-by-layer one up to rounding. The rest of the bottleneck runs as usual at half the
resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.conv import conv_add_
from wrc.layers.norm import group_norm_, group_norm_affine
from wrc.ops.pixel_mlp import pixel_mlp, pixel_mlp_moments

BAND_PIXELS = 1 << 15  # ~ 4 MB of 32-channel float32 per band, a sixth of a 448 x 448 map: L3-resident


def band_rows(width: int, band_pixels: int = BAND_PIXELS) -> int:
    """An even number of full-resolution rows per band (even: the stride-2 layers start on an output row)."""
    return max(2, band_pixels // max(width, 1) // 2 * 2)


def image_moments(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean (B, C) and population covariance (B, C, C) of the pixels, in float64.

    Sums in the image's dtype (cascade summation) over the centred image, one channel pair at a time (no
    (B, C, C, H, W) product), then float64.
    """
    b, c = image.shape[:2]
    mean = image.mean((2, 3))
    centred = image - mean.view(b, c, 1, 1)
    cov = image.new_empty(b, c, c, dtype=torch.float64)
    for i in range(c):
        for j in range(i + 1):
            cov[:, i, j] = cov[:, j, i] = (centred[:, i] * centred[:, j]).mean((1, 2)).double()
    return mean.double(), cov


def folded(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``conv`` (no bias of its own) followed by the per-channel affine map (k,) scale, shift."""
    return conv.weight * scale.view(-1, 1, 1, 1), shift


def full_resolution_stage(stem: nn.Sequential, block: nn.Module, image: torch.Tensor,
                          band_pixels: int = BAND_PIXELS, mean: torch.Tensor | None = None,
                          std: torch.Tensor | None = None) -> torch.Tensor:
    """``block(stem(image))`` for the GuidanceEncoder's stem and first (stride-2) Bottleneck, in row bands.

    ``image``: (B, 3, H, W), normalised, preferably channels-last; or raw with the (1, 3, 1, 1) ``mean`` and ``std``
    of its normalisation, which are then folded into the stem (``block(stem((image - mean) / std))`` up to rounding,
    without a pass over the image to normalise it). Inference only (no autograd through the in-place band
    arithmetic); returns (B, k, ceil(H/2), ceil(W/2)) channels-last.
    """
    b, _, height, width = image.shape
    stem_conv, body, shortcut_conv = stem[0], block.body, block.shortcut[0]
    out_size = ((height + 1) // 2, (width + 1) // 2)
    # zeros: conv_add_ adds each band into them; the shortcut's rows are written band by band
    strided = torch.empty(b, body[3].out_channels, *out_size, dtype=image.dtype,
                          memory_format=torch.channels_last).zero_()
    shortcut = torch.empty(b, shortcut_conv.out_channels, *out_size, dtype=image.dtype,
                           memory_format=torch.channels_last)
    # pass 1 for all samples: the stem's GroupNorm from each image's moments (the stem conv is affine in the pixels)
    weight = stem_conv.weight.flatten(1).double()  # k, 3
    bias = None
    if mean is not None and std is not None:  # the normalisation folded in: the conv then acts on the raw image
        weight = weight / std.view(1, 3).double()
        bias = -(weight @ mean.view(3).double())  # k
    pixel_mean, cov = image_moments(image)
    stem_mean = pixel_mean @ weight.t() + (0.0 if bias is None else bias)
    scale, shift = group_norm_affine(stem[1], stem_mean, torch.einsum("ci,bij,cj->bc", weight, cov, weight),
                                     image.dtype)
    for i in range(b):  # per sample: the GroupNorms folded into the convolutions before them
        if bias is None:
            stem_weights = folded(stem_conv, scale[i], shift[i])
        else:
            stem_weights = ((scale[i].double()[:, None] * weight).to(image.dtype),
                            (shift[i].double() + scale[i].double() * bias).to(image.dtype))
        _sample_in_bands(image[i:i + 1], stem_weights, body, shortcut_conv, strided[i:i + 1], shortcut[i:i + 1],
                         band_rows(width, band_pixels))
    x = group_norm_(body[4], strided, relu=True)  # at half resolution: GroupNorm, ReLU
    return group_norm_(body[7], body[6](x), relu=True, residual=shortcut, residual_norm=block.shortcut[1])


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """A (1, C, H, W) map as (1, H W, C): a view where the map is channels-last."""
    return x.permute(0, 2, 3, 1).reshape(1, -1, x.shape[1])


def _sample_in_bands(image: torch.Tensor, stem_weights: tuple[torch.Tensor, torch.Tensor], body: nn.Sequential,
                     shortcut_conv: nn.Conv2d, strided: torch.Tensor, shortcut: torch.Tensor, rows: int) -> None:
    """Passes 2 and 3 for one sample (batch 1), writing the stride-2 3x3 conv and the shortcut conv.

    The stem and the reduce conv (both 1x1, a ReLU between them) run as one wrc.ops.pixel_mlp: only the
    statistics (pass 2) or a band of the output map (pass 3) are ever made."""
    height, width = image.shape[-2:]
    reduce_conv = body[0]
    stem_weight, stem_bias = stem_weights[0].flatten(1), stem_weights[1]  # (k, 3) (or (k, 3, 1, 1)), (k,)

    # pass 2, over the whole sample (the kernel stores nothing per pixel): the reduce conv's statistics; the shortcut
    # conv from the stem at the even rows and columns, written into its output
    mean, var = pixel_mlp_moments(_pixels(image), stem_weight, stem_bias, reduce_conv.weight.flatten(1))
    pixel_mlp(_pixels(image[:, :, ::2, ::2]), stem_weight, stem_bias, shortcut_conv.weight.flatten(1),
              out=_pixels(shortcut))
    scale, offset = group_norm_affine(body[1], mean, var, image.dtype)
    reduce_weight, reduce_bias = folded(reduce_conv, scale[0], offset[0])
    reduce_weight = reduce_weight.flatten(1)
    k = reduce_conv.out_channels

    # pass 3: the stride-2 3x3 conv over bands of output rows; output row i reads input rows 2i - 1 .. 2i + 1
    out_rows = rows // 2
    bands = image.new_empty(1, min(rows + 1, height) * width, k)  # one buffer for every band: no fresh memory each
    for first in range(0, strided.shape[-2], out_rows):
        last = min(strided.shape[-2], first + out_rows)
        start, stop = max(2 * first - 1, 0), min(2 * last, height)
        band = pixel_mlp(_pixels(image[:, :, start:stop]), stem_weight, stem_bias, reduce_weight, reduce_bias,
                         relu=True, out=bands[:, :(stop - start) * width])  # the first GroupNorm folded in, its ReLU
        band = band.view(1, stop - start, width, k).permute(0, 3, 1, 2)  # a channels-last map
        top, bottom = int(first == 0), 2 * last - stop  # zero padding rows outside the image
        if top and not bottom:  # the conv's own padding: its extra bottom row is never read (2 last rows in)
            conv_add_(strided[:, :, first:last], band, body[3].weight, None, 2, (1, 1))
            continue
        if top or bottom:
            band = F.pad(band, (0, 0, top, bottom))
        conv_add_(strided[:, :, first:last], band, body[3].weight, None, 2, (0, 1))
