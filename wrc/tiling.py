"""Tiled inference: run a feature-to-feature upsampler tile by tile, so memory is bounded by the tile.

The token grid is cut into tiles of ``tile`` pixels (a multiple of the patch size, so tiles are whole tokens).
Each tile runs with a *halo* of extra tokens (and their pixels) on every side, wide enough for the method's
receptive field; the halo is cropped away and the tiles are written into one preallocated output (optionally
on another device than the tiles). Seams can be blended: within ``blend`` tokens of a tile boundary the two
tiles are mixed by linear ramps that sum to one, so outputs stay continuous where tiles differ.

Exactness. A method is *local* when an output cell depends only on tokens and pixels within a finite distance
(its receptive field, derived below from the architecture: kernel sizes, strides, number of 2x steps, the
block structure of the k = s solves). For local methods, with the default halo (the field plus the blend,
rounded up to whole tokens), tiled equals untiled to float rounding, provided every grid the method builds
lines up with the tile origins: an image that is an integer multiple of the token grid, and an output that is
one too or that the method reaches by a final bilinear resize, which the tiles then reproduce (tiles run at the
method's own grid, and the resize is applied per tile as an explicit matrix). The derived halo was checked to be
the smallest exact one (float64 scans of every local method at 2x, 4x and 8x; tested to within one token).
Otherwise the plan says why it is not exact:
- spatial normalisation: GroupNorm / InstanceNorm / LayerNorm statistics, and BatchNorm in training mode,
  are taken over the tile instead of the image. WRC, Converse2D and wrc_tconv have 33 GroupNorm layers; with
  them removed they tile exactly at the derived halo (tested), so GroupNorm is their only non-local operator.
  Measured (tests/wrc/test_tiling.py; random weights and images, 4-token tiles): 1e-2 to 3.5e-2 relative L2;
  benchmarks/results/tiling_cpu.md: 3.5e-4 at 1024 px with 512 px tiles, for the untrained model whose output
  is nearly bilinear (a trained one is nearer the tests' figure). Exact tiling would need one statistics pass per
  normalisation layer (33 passes): not done. Dropout in training mode is random;
- global solves: Converse2D's FFT closed form and WRC's conjugate gradients for kernel_size > 2 couple the
  whole (padded) grid; their influence decays with distance, so the halo is a trade-off, not a guarantee
  (k = 2, the default, is block-local: A A^T is diagonal);
- fractional pooling: the guidance branches of LiFT and the WRC family pool 1/4-resolution maps to 2x the grid;
  for a patch size that is not a multiple of 4 (14) the pooling windows depend on the tile's extent;
- bicubic or nearest to an output that is not an integer multiple of the grid: tiles run at the largest
  multiple below it and are resampled bilinearly (one extra interpolation); an image that is not a multiple of
  the grid is resized once to h P x w P pixels (measured for JBU, 100 x 70 px on 12 x 8 tokens: 8e-3).

Scope: feature-to-feature upsamplers (bilinear, bicubic, nearest, resize_conv, transposed_conv, featup_jbu,
lift, wrc, converse2d, wrc_tconv). Backbone-in-the-loop methods (srt, featup_implicit, large_image, strided)
run the backbone on the image and are refused. A method this module does not know can declare its field with
a ``tiling_radius(ratio, image_pixels) -> float | None`` method (tokens; None = global), or be given ``halo=``.
Tiling is for inference: with gradients enabled every tile's graph is kept, so memory is no longer bounded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from wrc.upsamplers.base import Upsampler, _check_size, resize
from wrc.upsamplers.classic import ResizeConv, TransposedConv
from wrc.upsamplers.converse2d import Converse2D, WRCTransposedConv
from wrc.upsamplers.featup_jbu import FeatUpJBU
from wrc.upsamplers.guided import GuidedReverseNet
from wrc.upsamplers.interpolate import Bicubic, Bilinear, Nearest
from wrc.upsamplers.lift import LiFT
from wrc.upsamplers.wrc import WRC

log = logging.getLogger("wrc")

DEFAULT_TILE_TOKENS = 32  # 512 px for patch 16, 448 for patch 14
DEFAULT_BLEND = 2  # tokens of linear ramp on each side of a seam, for methods that do not tile exactly


# ----------------------------------------------------------------------------------------------------------------
# Receptive fields: the largest distance, in tokens, from an output cell's centre to the centre of any token or
# pixel it reads. Stages compose by adding their radii; the image enters every 2x step, so the field is the
# largest of (the image's path into step k + the feature paths of the steps after it) and the feature path
# through all steps. Per operator, in input cells of the stage: conv k x k stride 1: k // 2; conv 3x3 stride 2:
# 1.5; 2x2 stride-2 transposed conv: 0.25; 4x4 stride-2 transposed conv: 0.75; bilinear r-times: 1 - 1/(2r)
# (bicubic: 2 - 1/(2r)); an antialiased resize that shrinks by f reads f input cells (its triangle filter).
# ----------------------------------------------------------------------------------------------------------------

NONE = -math.inf  # the radius of an input a path does not read


def resize_radius(src: float, dst: float, *, antialias: bool = True, taps: int = 1) -> float:
    """Field (tokens) of a bilinear (taps=1) or bicubic (taps=2) resize from ``src`` to ``dst`` cells per token."""
    if src == dst:
        return 0.0
    if dst < src:
        return taps / dst if antialias else taps / src
    factor = dst / src
    return (taps - 1 / (2 * factor) if factor == int(factor) else taps) / src


def pool_radius(src: float, dst: float) -> float:
    """Field (tokens) of an adaptive pool from ``src`` to ``dst`` cells per token (windows of src / dst cells)."""
    width = src / dst
    cells = width / 2 - 0.5 if width == int(width) else width / 2 + 0.5
    return max(cells, 0.0) / src


def native_steps(scale: int, ratio: tuple[float, float]) -> int:
    """2x steps of a fixed-factor method for outputs ``ratio`` cells per token (base.Upsampler's policy)."""
    steps = 0
    while scale ** (steps + 1) <= min(ratio):
        steps += 1
    return steps


def stack_layers(num_layers: int, ratio: tuple[float, float]) -> int:
    """Layers a StackedUpsampler uses for outputs ``ratio`` cells per token (double while smaller)."""
    layers = 0
    while layers < num_layers and 2**layers < max(ratio):
        layers += 1
    return layers


def compose(step, steps: int) -> float:
    """Field of ``steps`` chained steps; ``step(k, feat, img)`` is the output radius of step k given the radii
    at which its features and the image enter (NONE: not read)."""
    feature_paths = [step(k, 0.0, NONE) for k in range(steps)]
    radius = sum(feature_paths)
    for k in range(steps):
        radius = max(radius, step(k, NONE, 0.0) + sum(feature_paths[k + 1 :]))
    return radius


def _final_resize(grid: float, ratio: tuple[float, float], antialias: bool = True) -> float:
    return max(resize_radius(grid, r, antialias=antialias) for r in ratio)


def _interpolate_radius(up: Upsampler, ratio: tuple[float, float], pixels: tuple[float, float]) -> float:
    if up.mode == "nearest":
        return 0.5 if max(ratio) > 1 else 0.0
    return max(resize_radius(1, r, taps=2 if up.mode == "bicubic" else 1) for r in ratio)


def _stack_radius(up: Upsampler, ratio: tuple[float, float], pixels: tuple[float, float]) -> float:
    """resize_conv, transposed_conv and featup_jbu: their 2x layers, then the final resize."""

    def layer(index: int, feat: float, img: float) -> float:
        g = 2.0**index  # input cells per token
        guide = img + max(resize_radius(p, 2 * g) for p in pixels)  # the image on the layer's output grid
        if isinstance(up, TransposedConv):
            return feat + 0.75 / g
        if isinstance(up, ResizeConv):  # conv 3x3 on the 2x grid over [bilinear 2x, guidance]
            return max(feat + 0.75 / g, guide if up.guidance else NONE) + 0.5 / g
        if getattr(up, "guidance_resize", "bilinear") == "adaptive_avg":  # JBU
            guide = img + max(pool_radius(p, 2 * g) for p in pixels)
        # adaptive conv over r cells of the 2x grid, of bicubic-2x features, weighted by the range kernel
        return max(feat + 1.75 / g, guide) + up.layers[index].radius / (2 * g)

    layers = stack_layers(len(up.layers), ratio)
    return compose(layer, layers) + _final_resize(2.0**layers, ratio, getattr(up, "final_antialias", True))


def _lift_radius(up: LiFT, ratio: tuple[float, float], pixels: tuple[float, float]) -> float:
    def step(index: int, feat: float, img: float) -> float:
        g, px = 2.0**index, 2.0**index * up.patch_size  # grid cells and guidance pixels per token
        image = img + max(resize_radius(p, px) for p in pixels)
        skip_2x = image + 4.5 / px + pool_radius(px / 4, 2 * g)  # two 3x3 stride-2 convs, then the pool
        skip_1x = skip_2x + 0.75 / g  # 3x3 stride 2 on the 2x grid
        lifted = max(feat, skip_1x) + 0.25 / g  # 2x2 stride-2 transposed conv
        return max(lifted, skip_2x) + 1.0 / g  # two 3x3 convs on the 2x grid

    steps = native_steps(2, ratio)
    return compose(step, steps) + _final_resize(2.0**steps, ratio)


def _guided_step(up: GuidedReverseNet, g: float, pixels: tuple[float, float], feat: float, img: float) -> float:
    """One 2x step of the WRC family at g cells per token (wrc.upsamplers.guided, the layers in wrc.layers)."""
    px = g * up.patch_size
    image = img + max(resize_radius(p, px) for p in pixels)
    guide_2x = image + 10.5 / px + pool_radius(px / 4, 2 * g)  # four bottlenecks to 1/4 (3x3 convs), the pool
    guide_1x = guide_2x + 1.75 / g  # a stride-2 bottleneck on the 2x grid, one on the grid
    y = max(feat, guide_1x) + 2.0 / g  # two fusing bottlenecks on the grid
    z = y + 0.75 / g  # bilinear 2x prior
    if up.prior_refine is not None:
        z = max(z, guide_2x) + 0.5 / g
    if isinstance(up, WRC):  # wL: 3x3 on y; wH: 3x3 on [z, guide_2x]; a block solve reads its token and block
        x = max(y + 1.25 / g, max(z, guide_2x) + 1.0 / g)
    elif isinstance(up, Converse2D):
        x = max(y + 0.25 / g, z + 0.5 / g)
    else:  # 2x2 stride-2 transposed conv
        x = y + 0.25 / g
    out = max(x, guide_2x) + 0.5 / g  # output bottleneck (3x3 on the 2x grid), 1x1 head
    if up.feature_skip:
        out = max(out, feat + 0.75 / g)
    if up.output_solver is None:
        return out
    if isinstance(up, WRC):  # wL: 3x3 on [features, guide_1x]; wH: 3x3 on [out, guide_2x]; the block solve
        low = max(feat, guide_1x) + 1.0 / g
        return max(feat + 0.25 / g, low + 0.25 / g, out + 0.5 / g, max(out, guide_2x) + 1.0 / g)
    return max(feat + 0.25 / g, out + 0.5 / g)


def _guided_radius(up: GuidedReverseNet, ratio: tuple[float, float], pixels: tuple[float, float]) -> float:
    steps = native_steps(2, ratio)
    radius = compose(lambda k, feat, img: _guided_step(up, 2.0**k, pixels, feat, img), steps)
    return radius + _final_resize(2.0**steps, ratio)


_RADIUS = {Bilinear: _interpolate_radius, Bicubic: _interpolate_radius, Nearest: _interpolate_radius,
           ResizeConv: _stack_radius, TransposedConv: _stack_radius, FeatUpJBU: _stack_radius, LiFT: _lift_radius,
           WRC: _guided_radius, Converse2D: _guided_radius, WRCTransposedConv: _guided_radius}


# ----------------------------------------------------------------------------------------------------------------
# What tiling a given upsampler means: its field, the alignment of tile origins, why it may not be exact
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TilingSpec:
    """radius: receptive field of the local operators in tokens (None: unknown); unit: tile origins must be
    multiples of this many tokens; reasons: why tiled differs from untiled (empty: exact)."""

    radius: float | None
    unit: int = 1
    reasons: tuple[str, ...] = ()


def spatial_coupling(module: nn.Module) -> list[str]:
    """Layers whose output at a location depends on the whole map (normalisation statistics) or on chance."""
    found: dict[str, list[str]] = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.GroupNorm | nn.modules.instancenorm._InstanceNorm | nn.LayerNorm):
            kind = f"{type(m).__name__} (statistics over the tile, not the image)"
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats):
            kind = "BatchNorm with batch statistics (training mode): over the tile, not the image"
        elif isinstance(m, nn.modules.dropout._DropoutNd | nn.Dropout) and m.training and m.p > 0:
            kind = "Dropout in training mode (random per call)"
        else:
            continue
        found.setdefault(kind, []).append(name)
    return [f"{len(names)} x {kind}, e.g. {names[0]}" for kind, names in found.items()]


def _solver_reasons(up: Upsampler) -> list[str]:
    reasons = []
    for name in ("layer", "output_solver"):
        solver = getattr(up, name, None)
        kernel = getattr(solver, "kernel", None)
        if kernel is not None and kernel.kernel_size > solver.scale:
            kind = "FFT closed form" if isinstance(up, Converse2D) else "conjugate-gradient solve"
            reasons.append(f"{name}: kernel_size={kernel.kernel_size} > scale, the {kind} couples the whole grid")
    return reasons


def tiling_spec(up: Upsampler, ratio: tuple[float, float], pixels: tuple[float, float]) -> TilingSpec:
    """The spec of ``up`` for tile outputs of ``ratio`` cells per token and a guidance of ``pixels`` per token."""
    if up.needs_backbone:
        raise ValueError(f"upsampler {up.name!r} runs the backbone on the image (needs_backbone): tiling covers "
                         "feature-to-feature upsamplers only")
    reasons = spatial_coupling(up)
    hook = getattr(up, "tiling_radius", None)
    if callable(hook):
        radius = hook(ratio, pixels)
        return TilingSpec(radius, 1, tuple(reasons) + (() if radius is not None else ("declared global",)))
    if type(up) not in _RADIUS:
        return TilingSpec(None, 1, (*reasons, f"receptive field of {type(up).__qualname__} unknown to wrc.tiling"))
    unit = 1
    if isinstance(up, LiFT | GuidedReverseNet):  # two stride-2 convs on the guidance: origins on multiples of 4 px
        unit = 4 // math.gcd(up.patch_size, 4)
        if up.patch_size % 4:
            reasons.append(f"patch {up.patch_size} is not a multiple of 4: the guidance pooling windows depend on "
                           "the tile's extent")
    reasons += _solver_reasons(up)
    return TilingSpec(_RADIUS[type(up)](up, ratio, pixels), unit, tuple(reasons))


def halo_for(radius: float, blend: int, unit: int) -> int:
    """Tokens of halo that make the cells within ``blend`` tokens of a core exact: ceil(radius + blend - 1/2)
    (a core's outermost cell centre lies inside its token, so half a token of the field is free)."""
    halo = max(0, math.ceil(radius + blend - 0.5 - 1e-9))
    return -(-halo // unit) * unit


# ----------------------------------------------------------------------------------------------------------------
# The plan: tiles along each axis, and how tile outputs map onto the output
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One axis: ``tokens`` of grid, ``size`` output cells, tiles computed at ``ratio`` cells per token (resampled
    to ``size``, antialiased when shrinking if ``antialias``, unless size == tokens * ratio), ``pixels`` guidance
    pixels per token."""

    tokens: int
    size: int
    ratio: int
    pixels: int
    antialias: bool = True

    @property
    def resampled(self) -> bool:
        return self.size != self.tokens * self.ratio


def native_grid(up: Upsampler, ratio: tuple[float, float]) -> tuple[int, bool] | None:
    """(cells per token, antialias) of the grid a method reaches before its final bilinear resize to the requested
    size, for outputs ``ratio`` cells per token; None when its last step is no bilinear resize (bicubic, ...)."""
    if type(up) is Bilinear:
        return 1, False
    if isinstance(up, LiFT | GuidedReverseNet) and type(up) in _RADIUS:
        return 2 ** native_steps(2, ratio), True
    if isinstance(up, ResizeConv | TransposedConv | FeatUpJBU) and type(up) in _RADIUS:
        return 2 ** stack_layers(len(up.layers), ratio), bool(getattr(up, "final_antialias", True))
    return None


@dataclass(frozen=True)
class TilePlan:
    """Everything ``tiled_upsample`` will do; ``exact`` says whether tiled equals untiled (else ``reasons``)."""

    rows: Axis
    cols: Axis
    tile: int  # tokens
    halo: int  # tokens
    blend: int  # tokens
    row_cores: tuple[int, ...]  # core boundaries in tokens, 0 .. rows.tokens
    col_cores: tuple[int, ...]
    resize_image: bool
    reasons: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return not self.reasons

    @property
    def num_tiles(self) -> int:
        return (len(self.row_cores) - 1) * (len(self.col_cores) - 1)

    def tiles(self) -> Iterable[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        """((c0, c1, e0, e1) rows, (c0, c1, e0, e1) columns): core and context token ranges of every tile."""
        for r0, r1 in zip(self.row_cores, self.row_cores[1:], strict=False):
            for c0, c1 in zip(self.col_cores, self.col_cores[1:], strict=False):
                yield (_context(r0, r1, self.halo, self.rows.tokens), _context(c0, c1, self.halo, self.cols.tokens))


def _context(c0: int, c1: int, halo: int, tokens: int) -> tuple[int, int, int, int]:
    return c0, c1, max(0, c0 - halo), min(tokens, c1 + halo)


def core_bounds(tokens: int, tile: int, unit: int) -> tuple[int, ...]:
    """ceil(tokens / tile) cores of balanced lengths (at most ``tile``), boundaries on multiples of ``unit``."""
    count = -(-tokens // tile)
    bounds = [min(tokens, unit * math.floor(k * tokens / (count * unit) + 0.5)) for k in range(count)] + [tokens]
    return tuple(sorted(set(bounds)))


def _positive_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value


def plan_tiles(up: Upsampler, grid: tuple[int, int], image_size: tuple[int, int], output_size: tuple[int, int],
               *, tile: int | None = None, halo: int | None = None, blend: int | None = None) -> TilePlan:
    """Plan the tiling of ``up`` for a (h, w) token grid, an (H, W) image and an (H', W') output.

    Args:
        tile: tile side in image pixels, a multiple of the patch size (default: 32 tokens).
        halo: tokens of context on every side of a tile (default: the receptive field plus ``blend``).
        blend: tokens of linear ramp on each side of a seam (default: 0 for exact methods, 2 otherwise).
    """
    patch = up.patch_size
    tile = DEFAULT_TILE_TOKENS * patch if tile is None else _positive_int(tile, "tile", patch)
    if tile % patch:
        raise ValueError(f"tile must be a multiple of the patch size {patch} (whole tokens); got tile={tile}")
    resize_image = image_size[0] % grid[0] != 0 or image_size[1] % grid[1] != 0
    pixels = (patch, patch) if resize_image else (image_size[0] // grid[0], image_size[1] // grid[1])
    multiple = output_size[0] % grid[0] == 0 and output_size[1] % grid[1] == 0
    real = (output_size[0] / grid[0], output_size[1] / grid[1])
    native = None if multiple else native_grid(up, real)
    ratios = (int(real[0]), int(real[1])) if native is None else (native[0], native[0])
    antialias = True if native is None else native[1]
    rows, cols = (Axis(n, size, max(1, r), p, antialias)
                  for n, size, r, p in zip(grid, output_size, ratios, pixels, strict=True))
    spec = tiling_spec(up, real if native else (rows.ratio, cols.ratio), pixels)
    tokens = tile // patch
    if tokens % spec.unit:
        raise ValueError(f"tile must be a multiple of {spec.unit * patch} px for {up.name!r} with patch {patch} "
                         f"(tile origins on multiples of {spec.unit} tokens); got tile={tile}")
    reasons = list(spec.reasons)
    if blend is None:
        blend = 0 if not reasons and spec.radius is not None else DEFAULT_BLEND
        blend = min(blend, tokens // 2)
    elif _positive_int(blend, "blend", 0) > tokens // 2:
        raise ValueError(f"blend must be at most half a tile ({tokens // 2} tokens for tile={tile}); got {blend}")
    resampled = rows.resampled or cols.resampled
    fallback = resampled and native is None  # tiles at the integer multiple below, then one more bilinear resize
    if halo is None:
        if spec.radius is None:
            raise ValueError(f"the receptive field of {up.name!r} is unknown: pass halo= (tokens of context)")
        halo = halo_for(spec.radius + (1 / min(rows.ratio, cols.ratio) if fallback else 0), blend, spec.unit)
    else:
        _positive_int(halo, "halo", 0)
        if halo % spec.unit:
            raise ValueError(f"halo must be a multiple of {spec.unit} tokens for {up.name!r} with patch {patch}; "
                             f"got {halo}")
        if halo < blend + resampled:
            raise ValueError(f"halo must be at least blend{' + 1 (the output is resampled)' * resampled} = "
                             f"{blend + resampled} tokens, so the blended band lies inside every tile; got {halo}")
        if spec.radius is not None and halo < halo_for(spec.radius, blend, spec.unit):
            reasons.append(f"halo={halo} is below the receptive field ({spec.radius:.3g} tokens, + blend {blend})")
    if fallback:
        reasons.append(f"output {output_size} is not a multiple of the grid {grid}: tiles run at "
                       f"{rows.ratio}x{cols.ratio} cells per token and are resampled bilinearly")
    if resize_image and not isinstance(up, Bilinear | Bicubic | Nearest):
        reasons.append(f"image {image_size} is not a multiple of the grid {grid}: resized once to "
                       f"{grid[0] * patch}x{grid[1] * patch}")
    return TilePlan(rows, cols, tokens, halo, blend, core_bounds(grid[0], tokens, spec.unit),
                    core_bounds(grid[1], tokens, spec.unit), resize_image, tuple(reasons))


# ----------------------------------------------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------------------------------------------


def _ramp(x: torch.Tensor, boundary: int, blend: int, tokens: int) -> torch.Tensor:
    """U_c(x): 0 before the seam at token ``boundary``, 1 after, linear over [c - blend, c + blend)."""
    if boundary <= 0:
        return torch.ones_like(x)
    if boundary >= tokens:
        return torch.zeros_like(x)
    if blend == 0:
        return (x >= boundary).to(x.dtype)
    return ((x - boundary + blend) / (2 * blend)).clamp(0, 1)


def _axis_map(axis: Axis, ranges: tuple[int, int, int, int], blend: int, device: torch.device):
    """Output cells [o0, o1) a tile writes, their weights, and the tile cells that give them: a slice of the tile
    output, or (when resampled) a bilinear matrix (o1 - o0, tile cells)."""
    c0, c1, e0, e1 = ranges
    scale = axis.size / axis.tokens  # output cells per token
    o0 = max(0, math.floor((c0 - blend) * scale)) if c0 > 0 else 0
    o1 = min(axis.size, math.ceil((c1 + blend) * scale)) if c1 < axis.tokens else axis.size
    centres = (torch.arange(o0, o1, dtype=torch.float64, device=device) + 0.5) / scale  # in tokens
    weight = _ramp(centres, c0, blend, axis.tokens) - _ramp(centres, c1, blend, axis.tokens)
    if not axis.resampled:
        return o0, o1, weight, slice(o0 - e0 * axis.ratio, o1 - e0 * axis.ratio)
    source = axis.tokens * axis.ratio
    matrix = resample_matrix(source, axis.size, o0, o1, axis.antialias, device)
    width = (e1 - e0) * axis.ratio
    if matrix[:, : e0 * axis.ratio].any() or matrix[:, e0 * axis.ratio + width :].any():
        raise AssertionError("a resampled tile reads outside its context: the halo is too small for the blend")
    return o0, o1, weight, matrix[:, e0 * axis.ratio : e0 * axis.ratio + width]


def resample_matrix(src: int, dst: int, o0: int, o1: int, antialias: bool, device: torch.device) -> torch.Tensor:
    """Rows o0..o1 of the (dst, src) matrix of F.interpolate(mode="bilinear", align_corners=False, antialias=...):
    a triangle filter widened by src / dst when shrinking with antialias, plain linear interpolation otherwise."""
    out = torch.arange(o0, o1, dtype=torch.float64, device=device)
    scale = src / dst
    matrix = torch.zeros(o1 - o0, src, dtype=torch.float64, device=device)
    if antialias and scale > 1:
        centre = scale * (out + 0.5)
        taps = torch.arange(src, dtype=torch.float64, device=device)
        weight = (1 - ((taps[None, :] + 0.5 - centre[:, None]) / scale).abs()).clamp_min(0)
        return matrix + weight / weight.sum(dim=1, keepdim=True)
    position = ((out + 0.5) * scale - 0.5).clamp_min(0)
    low = position.floor().long().clamp_max(src - 1)
    frac = position - low
    rows = torch.arange(o1 - o0, device=device)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, (low + 1).clamp_max(src - 1)), frac, accumulate=True)
    return matrix


def _device_of(up: nn.Module, fallback: torch.device) -> torch.device:
    for t in (*up.parameters(), *up.buffers()):
        return t.device
    return fallback


def tiled_upsample(up: Upsampler, features: torch.Tensor, image: torch.Tensor,
                   output_size: tuple[int, int] | None = None, *, tile: int | None = None, halo: int | None = None,
                   blend: int | None = None, out: torch.Tensor | None = None,
                   out_device: torch.device | str | None = None) -> torch.Tensor:
    """``up(features, image, output_size)`` computed tile by tile (module docstring; the plan: ``plan_tiles``).

    Args:
        up: a feature-to-feature upsampler; tiles run on its device.
        features: (B, C, h, w) tokens, on any device; image: (B, 3, H, W) in [0, 1].
        tile, halo, blend: see ``plan_tiles``.
        out: a preallocated (B, C, H', W') result to write into (e.g. on the CPU, or memory-mapped).
        out_device: where to allocate the result when ``out`` is None (default: the features' device).
    """
    if features.ndim != 4 or image.ndim != 4 or image.shape[0] != features.shape[0] or image.shape[1] != 3:
        raise ValueError(f"features must be (B, C, h, w) and image (B, 3, H, W) with the same B; got "
                         f"{tuple(features.shape)} and {tuple(image.shape)}")
    grid = (features.shape[-2], features.shape[-1])
    size = up.default_output_size(features, image) if output_size is None else _check_size(output_size)
    shape = (*features.shape[:2], *size)
    if out is not None and (tuple(out.shape) != shape or not out.is_floating_point()):
        raise ValueError(f"out must be a floating-point tensor of shape {shape}; got {out.dtype} {tuple(out.shape)}")
    device = _device_of(up, features.device)
    smaller = size[0] < grid[0] or size[1] < grid[1]  # an output smaller than the tokens: nothing to bound
    plan = None if smaller else plan_tiles(up, grid, tuple(image.shape[-2:]), size, tile=tile, halo=halo, blend=blend)
    if plan is None or plan.num_tiles == 1:  # one tile is the untiled call
        result = up(features.to(device), image.to(device), size)
        return result.to(out_device or features.device) if out is None else out.copy_(result)
    if out is None:
        out = features.new_empty(shape, device=out_device)
    if plan.resize_image:
        image = resize(image, (grid[0] * up.patch_size, grid[1] * up.patch_size))
    if plan.blend:
        out.zero_()
    rows, cols = plan.rows, plan.cols
    for row, col in plan.tiles():
        (_, _, r0, r1), (_, _, c0, c1) = row, col
        feats = features[..., r0:r1, c0:c1].to(device)
        img = image[..., r0 * rows.pixels : r1 * rows.pixels, c0 * cols.pixels : c1 * cols.pixels].to(device)
        result = up(feats, img, ((r1 - r0) * rows.ratio, (c1 - c0) * cols.ratio))
        o0, o1, w_rows, map_rows = _axis_map(rows, row, plan.blend, result.device)
        p0, p1, w_cols, map_cols = _axis_map(cols, col, plan.blend, result.device)
        part = result[..., map_rows, :] if isinstance(map_rows, slice) else torch.einsum(
            "oh,bchw->bcow", map_rows.to(result.dtype), result)
        part = part[..., map_cols] if isinstance(map_cols, slice) else torch.einsum(
            "bchw,pw->bchp", part, map_cols.to(result.dtype))
        target = out[..., o0:o1, p0:p1]
        if plan.blend:
            target += (part * (w_rows[:, None] * w_cols[None, :]).to(part.dtype)).to(out.device, out.dtype)
        else:
            target.copy_(part)
        del result, part  # before the next tile runs: one tile's buffers at a time
    return out


class TiledUpsampler(Upsampler):
    """An upsampler that runs ``upsampler`` tile by tile: usable wherever an Upsampler is (extractor, protocols).

    Args:
        upsampler: a feature-to-feature upsampler (not a backbone-in-the-loop one).
        tile, halo, blend: see ``plan_tiles``; out_device: where results are assembled (default: the features').
    """

    scale = None
    trainable = False

    def __init__(self, upsampler: Upsampler, *, tile: int | None = None, halo: int | None = None,
                 blend: int | None = None, out_device: torch.device | str | None = None) -> None:
        super().__init__(upsampler.in_channels, upsampler.patch_size)
        if upsampler.needs_backbone:
            raise ValueError(f"upsampler {upsampler.name!r} runs the backbone on the image (needs_backbone): "
                             "tiling covers feature-to-feature upsamplers only")
        self.upsampler, self.tile, self.halo, self.blend, self.out_device = upsampler, tile, halo, blend, out_device
        self.name = upsampler.name  # result records name the method, not the wrapper
        self.init_kwargs = dict(upsampler.init_kwargs)
        if hasattr(upsampler, "source"):
            self.source = upsampler.source

    def default_output_size(self, features: torch.Tensor, image: torch.Tensor) -> tuple[int, int]:
        return self.upsampler.default_output_size(features, image)

    def plan(self, features: torch.Tensor, image: torch.Tensor,
             output_size: tuple[int, int] | None = None) -> TilePlan:
        size = self.default_output_size(features, image) if output_size is None else _check_size(output_size)
        return plan_tiles(self.upsampler, tuple(features.shape[-2:]), tuple(image.shape[-2:]), size, tile=self.tile,
                          halo=self.halo, blend=self.blend)

    def forward(self, features: torch.Tensor, image: torch.Tensor, output_size: tuple[int, int] | None = None,
                backbone: nn.Module | None = None) -> torch.Tensor:
        return tiled_upsample(self.upsampler, features, image, output_size, tile=self.tile, halo=self.halo,
                              blend=self.blend, out_device=self.out_device)

    def extra_repr(self) -> str:
        return f"tile={self.tile}, halo={self.halo}, blend={self.blend}"


__all__ = ["TilePlan", "TiledUpsampler", "TilingSpec", "plan_tiles", "spatial_coupling", "tiled_upsample",
           "tiling_spec"]
