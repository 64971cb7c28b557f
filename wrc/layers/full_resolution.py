"""The guidance encoder's full-resolution stage computed in row bands, for inference.

The stem (1x1 conv, GroupNorm, ReLU) and the first bottleneck's full-resolution half (1x1 conv, GroupNorm, ReLU,
the stride-2 3x3 conv, and the stride-2 1x1 shortcut) are the only layers at the image's own size. Computed
layer by layer they make four or more (B, k, H, W) maps, 25 MB each at 448 x 448 x 32: on the CPU each is fresh
memory from the OS (glibc maps allocations of this size anew), and touching it costs more than the arithmetic
(a 1x1 conv writing fresh memory: 5-7 ms; into reused memory: 1.3 ms). Here no full-resolution map exists: the
stage runs over bands of rows a few MB in size, in three passes, each recomputing the cheap layers before it:

1. the stem's GroupNorm statistics, exact from the image's mean and covariance (the conv is linear);
2. per band: stem, 1x1 conv -> the second GroupNorm's statistics (float64 moments); the strided shortcut conv;
3. per band of output rows (plus one halo row): stem, 1x1 conv, GroupNorm, ReLU, the stride-2 3x3 conv.

Each sample runs on its own, so that each GroupNorm, once its statistics are known, is folded into the conv
before it (scaled weights and a bias): a band's stem or normalised 1x1 conv is one oneDNN call, its ReLU fused
(float32), and the strided convolutions add each band into the stage's output in place (``conv_into``).

The statistics are as accurate as PyTorch's NCHW kernel (each band's float64 moments, wrc.ops.moments, combined
in float64), so the stage equals the layer-by-layer one up to rounding. The rest of the bottleneck runs as usual
at half the resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.norm import group_norm_, group_norm_affine
from wrc.ops.moments import channel_moments

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
                          band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """``block(stem(image))`` for the GuidanceEncoder's stem and first (stride-2) Bottleneck, in row bands.

    ``image``: (B, 3, H, W), normalised, preferably channels-last. Inference only (no autograd through the
    in-place band arithmetic); returns (B, k, ceil(H/2), ceil(W/2)) channels-last.
    """
    b, _, height, width = image.shape
    stem_conv, body, shortcut_conv = stem[0], block.body, block.shortcut[0]
    out_size = ((height + 1) // 2, (width + 1) // 2)
    # zeros: conv_into adds each band into them
    strided = torch.empty(b, body[3].out_channels, *out_size, dtype=image.dtype,
                          memory_format=torch.channels_last).zero_()
    shortcut = torch.empty(b, shortcut_conv.out_channels, *out_size, dtype=image.dtype,
                           memory_format=torch.channels_last).zero_()
    # pass 1 for all samples: the stem's GroupNorm from each image's moments (the stem conv is linear, no bias)
    weight = stem_conv.weight.flatten(1).double()  # k, 3
    mean, cov = image_moments(image)
    stem_affine = group_norm_affine(stem[1], mean @ weight.t(), torch.einsum("ci,bij,cj->bc", weight, cov, weight),
                                    image.dtype)
    for i in range(b):  # per sample: the GroupNorms folded into the convolutions before them
        stem_weights = folded(stem_conv, stem_affine[0][i], stem_affine[1][i])
        _sample_in_bands(image[i:i + 1], stem_weights, body, shortcut_conv, strided[i:i + 1], shortcut[i:i + 1],
                         band_rows(width, band_pixels))
    x = group_norm_(body[4], strided, relu=True)  # at half resolution: GroupNorm, ReLU
    return group_norm_(body[7], body[6](x), relu=True, residual=shortcut, residual_norm=block.shortcut[1])


def _oneDNN_pointwise() -> bool:
    """Whether oneDNN's fused convolution ops (the ones torch.compile's CPU backend emits) are available."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def conv_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, bias).relu_()`` for a 1x1 convolution: for float32, oneDNN's convolution with the
    ReLU as a post-op (the same bits, one pass over the band less)."""
    if x.dtype == torch.float32 and FUSED_CONVOLUTIONS and _oneDNN_pointwise():
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")
    return F.conv2d(x, weight, bias).relu_()


def conv_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, padding: tuple[int, int]) -> None:
    """``out[...] = F.conv2d(x, weight, stride=stride, padding=padding)`` for a zero-filled channels-last ``out``
    (a band of rows of a batch-1 map): for float32 oneDNN adds the convolution into ``out`` in place (its
    "add" post-op), so the band is never a tensor of its own to copy."""
    cl = torch.channels_last
    if (x.dtype == torch.float32 and FUSED_CONVOLUTIONS and _oneDNN_pointwise() and x.is_contiguous(memory_format=cl)
            and out.is_contiguous(memory_format=cl)):
        torch.ops.mkldnn._convolution_pointwise_.binary(out, x, weight, None, list(padding), [stride, stride], [1, 1],
                                                        1, "add", None, None, [], None)
    else:
        out.copy_(F.conv2d(x, weight, stride=stride, padding=padding))


FUSED_CONVOLUTIONS = True  # conv_relu / conv_into use oneDNN's fused ops where they can


def _sample_in_bands(image: torch.Tensor, stem_weights: tuple[torch.Tensor, torch.Tensor], body: nn.Sequential,
                     shortcut_conv: nn.Conv2d, strided: torch.Tensor, shortcut: torch.Tensor, rows: int) -> None:
    """Passes 2 and 3 for one sample (batch 1), writing the stride-2 3x3 conv and the shortcut conv."""
    height = image.shape[-2]
    reduce_conv = body[0]

    def stem(start: int, stop: int) -> torch.Tensor:
        return conv_relu(image[:, :, start:stop], *stem_weights)

    # pass 2: the reduce conv's statistics, the shortcut conv
    k = reduce_conv.out_channels
    sums, squares = image.new_zeros(1, k, dtype=torch.float64), image.new_zeros(1, k, dtype=torch.float64)
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        stem_band = stem(start, stop)
        conv_into(shortcut[:, :, start // 2:(stop + 1) // 2], stem_band, shortcut_conv.weight, 2, (0, 0))
        reduced = F.conv2d(stem_band, reduce_conv.weight).permute(0, 2, 3, 1).reshape(1, -1, k)
        band_mean, band_var = channel_moments(reduced)  # float64: the bands combine without losing digits
        sums += band_mean * reduced.shape[1]
        squares += (band_var + band_mean.square()) * reduced.shape[1]
    pixels = height * image.shape[-1]
    mean = sums / pixels
    scale, offset = group_norm_affine(body[1], mean, (squares / pixels - mean.square()).clamp_min(0.0), image.dtype)
    reduce_weights = folded(reduce_conv, scale[0], offset[0])

    # pass 3: the stride-2 3x3 conv over bands of output rows; output row i reads input rows 2i - 1 .. 2i + 1
    out_rows = rows // 2
    for first in range(0, strided.shape[-2], out_rows):
        last = min(strided.shape[-2], first + out_rows)
        start, stop = max(2 * first - 1, 0), min(2 * last, height)
        band = conv_relu(stem(start, stop), *reduce_weights)
        top, bottom = int(first == 0), 2 * last - stop  # zero padding rows outside the image
        if top and not bottom:  # the conv's own padding: its extra bottom row is never read (2 last rows in)
            conv_into(strided[:, :, first:last], band, body[3].weight, 2, (1, 1))
            continue
        if top or bottom:
            band = F.pad(band, (0, 0, top, bottom))
        conv_into(strided[:, :, first:last], band, body[3].weight, 2, (0, 1))
