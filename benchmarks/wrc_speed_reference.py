"""The guided networks' forward pass as it was before issue 17 ("Speed on the CPU"), frozen: the reference that
``bench_wrc_speed`` times against and that tests/wrc/upsamplers/test_wrc_speed_paths.py compares the optimised
forward with. It reads the parameters of a live WRC / Converse2D / wrc_tconv model (same state_dict), so the
two paths can differ only in how they compute, never in what. (One change since: its solves take float64
inputs in float64, not float32, as the layers now do: ``full_precision``.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrc.layers.reverse_conv import ReverseConv2d, WeightedReverseConv2d, full_precision
from wrc.ops.reverse_conv import block_solve_reference, weighted_reverse_conv
from wrc.upsamplers.guided import GuidedReverseNet


def bottleneck(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The old ``Bottleneck.forward``: relu(body(x) + shortcut(x)), NCHW."""
    return F.relu(block.body(x) + block.shortcut(x))


def encoder(enc: torch.nn.Module, image: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The old ``GuidanceEncoder.forward`` on a normalised image."""
    quarter = enc.stem(image)
    for block in enc.to_quarter:
        quarter = bottleneck(block, quarter)
    guide_2x = F.adaptive_max_pool2d(quarter, (2 * grid[0], 2 * grid[1]))
    guide_1x = guide_2x
    for block in enc.to_grid:
        guide_1x = bottleneck(block, guide_1x)
    if guide_1x.shape[-2:] != tuple(grid):
        guide_1x = F.adaptive_avg_pool2d(guide_1x, grid)
    return guide_2x, guide_1x


def bounded_map(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The old ``BoundedMap.forward``: low + (high - low) * sigmoid(conv(x)), with the module's own convolution."""
    return head.low + (head.high - head.low) * torch.sigmoid(full_precision(head.conv(x)))


def weighted_layer(layer: WeightedReverseConv2d, y: torch.Tensor, z: torch.Tensor, guide: torch.Tensor,
                   low_guide: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
    """The old ``WeightedReverseConv2d.forward`` (fused=False: the pure-PyTorch block solve for k = s)."""
    low_input = y if low_guide is None else torch.cat([y, low_guide], dim=1)
    w_low, w_high = bounded_map(layer.w_low, low_input), bounded_map(layer.w_high, torch.cat([z, guide], dim=1))
    kernel, y, z = layer.kernel(), full_precision(y), full_precision(z)
    if not fused and kernel.shape[-1] == layer.scale:
        return block_solve_reference(y, z, kernel, w_low.expand_as(y), w_high.expand_as(z))
    return weighted_reverse_conv(y, z, kernel, layer.scale, w_low, w_high, padding=layer.padding,
                                 padding_mode=layer.padding_mode, iterations=layer.iterations, tol=layer.tol)


def _solve(model: GuidedReverseNet, module: torch.nn.Module, y, z, guide_hr, guide_lr, fused: bool) -> torch.Tensor:
    if isinstance(module, WeightedReverseConv2d):
        return weighted_layer(module, y, z, guide_hr, guide_lr, fused)
    if isinstance(module, ReverseConv2d):
        return module(y, z)
    return module(y)  # wrc_tconv: the transposed convolution


def upsample_step(model: GuidedReverseNet, features: torch.Tensor, image: torch.Tensor,
                  fused: bool = True) -> torch.Tensor:
    """The old ``GuidedReverseNet.upsample_step``, NCHW throughout."""
    h, w = features.shape[-2:]
    guide_size = (h * model.patch_size, w * model.patch_size)
    if image.shape[-2:] != guide_size:
        image = F.interpolate(image, size=guide_size, mode="bilinear", align_corners=False, antialias=True)
    guide_2x, guide_1x = encoder(model.encoder, model.normalize(image), (h, w))
    y = bottleneck(model.fuse[1], bottleneck(model.fuse[0], torch.cat([features, guide_1x], dim=1)))
    z = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
    if model.prior_refine is not None:
        z = z + model.prior_refine(torch.cat([z, guide_2x], dim=1))
    x = _solve(model, model.layer, y, z, guide_2x, None, fused).to(y.dtype)
    out = model.head(bottleneck(model.out, torch.cat([x, guide_2x], dim=1)))
    if model.feature_skip:
        out = out + F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=False)
    if model.output_solver is None:
        return out
    return _solve(model, model.output_solver, features, out, guide_2x, guide_1x, fused).to(out.dtype)
