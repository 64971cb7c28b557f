"""Upsample Anything: per-token anisotropic joint bilateral kernels fitted at test time (Seo, Hamilton, Kim;
CVPR 2026), implemented from shared/reference/modern_peers.md section 6. No trained weights.

Every token q of the h x w grid owns a kernel with four parameters: spatial scales sigma_x, sigma_y (in output
pixels), an orientation theta = pi tanh(theta_raw) and a range scale sigma_r. An output pixel p takes the
normalised sum over the tokens q in a (2 R + 1)^2 window around its own token (R = ``max_radius``, cut per pixel
to ceil(2 max(sigma_x, sigma_y)) clamped to [1, R], with the sigmas bilinearly upsampled) of

    w(p, q) = exp(-u^2 / (2 sigma_x(q)^2) - v^2 / (2 sigma_y(q)^2) - |I(p) - I_down(q)|^2 / (2 sigma_r(q)^2))

with (u, v) the offset from p to q's centre rotated by theta(q), I the guidance on the output grid and I_down the
guidance bilinearly downsampled to the token grid (RGB in [0, 1]). Where the sum of weights is below
``min_denominator`` the output falls back to bilinear upsampling.

Fitting: the kernels are fitted per image so that they upsample the bicubically downsampled guidance back to the
guidance (L1), with Adam at lr 0.1 decayed exponentially toward 1e-9 over a nominal 5100 steps, stopped after 51
(the lr ends at about 0.83 x 0.1); then the same kernels upsample the features.

Two formulations of the same sum. Where the output size is a multiple of the grid (every use in this project's
protocols), all pixels of one token's cell share their window, so the window is one softmax per cell and the
weighted sum one small matrix product per cell, with the neighbours' coefficients gathered on the token grid
(``cell_upsample``; timed once by hand on one CPU thread, not yet a committed benchmark: 7.6 s at 128 px
and 40 s at 224 against the general form's 16.7 s and 85 s). For any other size the neighbours are streamed
in chunks of offsets at output size through a running log-sum-exp, so memory is bounded by a chunk, not by the
(2 R + 1)^2 window. In the fit, windows or chunks of more log-weights than a threshold are recomputed in the
backward pass (activation checkpointing), not stored.

Decisions where the description leaves a choice:
- The kernels are fitted on the output grid: the guidance is resized to the requested size first (any size;
  each axis has its own scale H' / h and W' / w, so non-integer and non-square factors work; the original uses
  one integer scale int(H / h)). A pixel's own token is the one whose cell holds its centre, floor((p + 0.5) / s)
  (the reference's round((p + 0.5) / s - 0.5) but at exact ties, which integer scales never meet).
- The per-pixel radius limits the window in tokens on each axis (a square window); taken as written, with the
  sigmas in pixels it only prunes where max(sigma) < R / 2 pixels.
- The fit runs in float32 (the original uses fp16 autocast with a GradScaler, a speed choice).
- Training-free and channel-agnostic: any channel count is accepted, the backbone is not needed
  (``trainable = False``); the output is differentiable in the features.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from wrc.upsamplers.base import Upsampler, register_upsampler, resize

_FLOOR = -1e30  # finite start of the running maximum: exp(_FLOOR - _FLOOR) never meets a 0 * inf
# the fit keeps the activations of streamed chunks, or of whole cell windows, with fewer log-weights than these
# (recomputing costs a forward pass; a cell window stores about ten tensors of its size)
_STORED_CHUNK, _STORED_WINDOW = 1 << 22, 1 << 24


def parent_tokens(n_out: int, n_tokens: int, device: torch.device) -> torch.Tensor:
    """Each output position's own token: the one whose cell holds its centre, floor((p + 0.5) n_tokens / n_out).

    Read off ``nearest-exact`` interpolation itself, so that these indices and the upsampling in ``_gather`` agree
    bit for bit. This is the reference's round((p + 0.5) / s - 0.5) except at exact ties (never for integer s)."""
    index = torch.arange(n_tokens, device=device, dtype=torch.float32).view(1, 1, n_tokens, 1)
    return F.interpolate(index, size=(n_out, 1), mode="nearest-exact").view(n_out).long()


def pixel_radius(params: torch.Tensor, size: tuple[int, int], max_radius: int) -> torch.Tensor:
    """(B, 1, H', W') window radius in tokens: ceil(2 max(sigma_x, sigma_y)) of the upsampled sigmas, in [1, R]."""
    sigmas = F.interpolate(params[:, :2].detach().exp(), size=size, mode="bilinear", align_corners=False)
    return torch.ceil(2 * sigmas.amax(dim=1, keepdim=True)).clamp(1, max_radius)


def _gather(lr: torch.Tensor, shifted: tuple[torch.Tensor, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """lr (B, c, h, w) -> (B, c, K, H', W'): for every output pixel, the token at its parent token plus offset k.

    Shifting on the token grid (shifted rows (K, h) and columns (K, w), clamped), then nearest-exact upsampling to
    the output grid: both steps have fast kernels and fast backward passes (a gather at output size does not)."""
    rows, cols = shifted
    tokens = lr[:, :, rows[:, :, None], cols[:, None, :]]  # B, c, K, h, w
    b, c, k = tokens.shape[:3]
    up = F.interpolate(tokens.reshape(b, c * k, *tokens.shape[-2:]), size=size, mode="nearest-exact")
    return up.view(b, c, k, *size)


def token_terms(params: torch.Tensor, guide_lr: torch.Tensor) -> torch.Tensor:
    """Per-token coefficients (B, 7, h, w) of the log-weight, computed once on the token grid.

    With a = 1 / sigma_x^2, b = 1 / sigma_y^2 and (u, v) the offset (u0, v0) rotated by theta, the spatial term
    -(a u^2 + b v^2) / 2 is -(u0^2 A + v0^2 B + 2 u0 v0 C) / 2 with A = a cos^2 + b sin^2, B = a sin^2 + b cos^2,
    C = (a - b) cos sin; the range term is -r |I(p) - I_down(q)|^2 with r = 1 / (2 sigma_r^2). Channels: A, B, C, r
    and I_down's three colours."""
    a, b = torch.exp(-2 * params[:, 0:1]), torch.exp(-2 * params[:, 1:2])
    theta = math.pi * torch.tanh(params[:, 2:3])
    cos, sin = theta.cos(), theta.sin()
    cos2, sin2 = cos * cos, sin * sin
    r = 0.5 * torch.exp(-2 * params[:, 3:4])
    return torch.cat([a * cos2 + b * sin2, a * sin2 + b * cos2, (a - b) * cos * sin, r, guide_lr], dim=1)


def _logits(terms: torch.Tensor, guide: torch.Tensor, offsets: torch.Tensor,
            geometry: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Log-weights (B, K, H', W') of the K token offsets (dy, dx), and the shifted token indices."""
    (h, w), (height, width) = terms.shape[-2:], guide.shape[-2:]
    dy, dx = offsets[:, 0], offsets[:, 1]
    parents = (geometry["rows"], geometry["cols"])
    rows = torch.arange(h, device=guide.device)[None] + dy[:, None]  # K, h: the token each token's offset reaches
    cols = torch.arange(w, device=guide.device)[None] + dx[:, None]  # K, w
    inside = (((rows >= 0) & (rows < h)).index_select(1, parents[0])[:, :, None]
              & ((cols >= 0) & (cols < w)).index_select(1, parents[1])[:, None, :])  # K, H', W'
    radius = geometry["radius"]  # B, 1, H', W'
    inside = inside & (dy.abs()[:, None, None] <= radius) & (dx.abs()[:, None, None] <= radius)
    shifted = (rows.clamp(0, h - 1), cols.clamp(0, w - 1))
    coef = _gather(terms, shifted, (height, width))  # B, 7, K, H', W'
    # offset from each pixel to its token's centre (t + 0.5) s - 0.5, in output pixels
    token_y = shifted[0].index_select(1, parents[0]).to(guide.dtype)  # K, H'
    token_x = shifted[1].index_select(1, parents[1]).to(guide.dtype)  # K, W'
    v0 = ((token_y + 0.5) * (height / h) - 0.5 - torch.arange(height, device=guide.device))[:, :, None]  # K, H', 1
    u0 = ((token_x + 0.5) * (width / w) - 0.5 - torch.arange(width, device=guide.device))[:, None, :]  # K, 1, W'
    spatial = u0 * u0 * coef[:, 0] + v0 * v0 * coef[:, 1] + 2 * (u0 * v0) * coef[:, 2]
    difference = guide[:, :, None] - coef[:, 4:]  # B, 3, K, H', W'
    logits = -0.5 * spatial - coef[:, 3] * (difference * difference).sum(dim=1)
    return logits.masked_fill(~inside, float("-inf")), shifted


def _exp_normal(x: torch.Tensor) -> torch.Tensor:
    """exp(x), with 0 where it would be subnormal (below the dtype's smallest normal number, relative to the largest
    weight 1): subnormal arithmetic runs up to 100 times slower on CPUs, and sharp fitted kernels produce plenty."""
    return x.masked_fill(x < math.log(torch.finfo(x.dtype).tiny), float("-inf")).exp()


def _stream_chunk(terms: torch.Tensor, guide: torch.Tensor, values: torch.Tensor,
                  offsets: torch.Tensor, geometry: dict[str, torch.Tensor], peak: torch.Tensor, numerator: torch.Tensor,
                  denominator: torch.Tensor, max_elements: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of offsets folded into the running (max, weighted sum, sum of weights)."""
    logits, shifted = _logits(terms, guide, offsets, geometry)
    new_peak = torch.maximum(peak, logits.amax(dim=1, keepdim=True)).detach()  # the result does not depend on it
    weights = _exp_normal(logits - new_peak)  # B, K, H', W'
    rescale = _exp_normal(peak - new_peak)
    channels = max(1, max_elements // max(1, weights.numel()))
    parts = [(weights[:, None] * _gather(values[:, c:c + channels], shifted, guide.shape[-2:])).sum(dim=2)
             for c in range(0, values.shape[1], channels)]
    return new_peak, numerator * rescale + torch.cat(parts, dim=1), denominator * rescale + weights.sum(1, True)


def token_offsets(grid: tuple[int, int], max_radius: int, device: torch.device) -> torch.Tensor:
    """(K, 2) token offsets (dy, dx) of the window that can land inside an h x w grid: |dy|, |dx| <= R."""
    reach_y, reach_x = min(max_radius, grid[0] - 1), min(max_radius, grid[1] - 1)
    mesh = torch.meshgrid(torch.arange(-reach_y, reach_y + 1, device=device),
                          torch.arange(-reach_x, reach_x + 1, device=device), indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, 2)


def on_cells(size: tuple[int, int], grid: tuple[int, int]) -> bool:
    """Whether an output ``size`` is a multiple of the token ``grid`` on both axes: the scales of ``cell_upsample``."""
    return size[0] % grid[0] == 0 and size[1] % grid[1] == 0


def _vanishing(peak: torch.Tensor, denominator: torch.Tensor, min_denominator: float) -> torch.Tensor:
    """Where the sum of weights exp(peak) * denominator is below ``min_denominator``: the bilinear pixels."""
    return peak + denominator.log() < math.log(min_denominator)


def bilateral_upsample(values: torch.Tensor, guide: torch.Tensor, guide_lr: torch.Tensor, params: torch.Tensor, *,
                       max_radius: int = 8, chunk: int = 49, min_denominator: float = 1e-6,
                       max_elements: int = 1 << 26, recompute: bool = False, path: str = "auto") -> torch.Tensor:
    """The anisotropic joint bilateral upsampling of the module docstring.

    Args:
        values: (B, C, h, w) what is upsampled (features, or the low-resolution RGB in the fit).
        guide: (B, 3, H', W') guidance on the output grid; guide_lr: (B, 3, h, w) the guidance on the token grid.
        params: (B, 4, h, w) log sigma_x, log sigma_y, theta_raw, log sigma_r per token.
        max_radius: R, the window is (2 R + 1)^2 tokens at most; chunk: offsets per streamed chunk.
        min_denominator: below this sum of weights, the pixel is bilinear.
        max_elements: gathered values per einsum (bounds memory for wide features).
        recompute: recompute each chunk in the backward pass instead of storing it (for fitting).
        path: "cells" (integer scales only: every output pixel of one token's cell has the same K neighbours,
            so the whole window is one softmax per cell, batched over cells), "stream" (any sizes: the
            neighbours streamed in chunks of offsets at output size), or "auto" (cells where the scales allow).
    Returns:
        (B, C, H', W').
    """
    (h, w), size = values.shape[-2:], tuple(guide.shape[-2:])
    integer_scales = on_cells(size, (h, w))
    if path not in ("auto", "cells", "stream"):
        raise ValueError(f"path must be 'auto', 'cells' or 'stream'; got {path!r}")
    if path == "cells" and not integer_scales:
        raise ValueError(f"path='cells' needs output sizes that are multiples of the grid; got {size} for {(h, w)}")
    if path == "cells" or (path == "auto" and integer_scales):
        return cell_upsample(values, guide, guide_lr, params, max_radius=max_radius, min_denominator=min_denominator,
                             max_elements=max_elements, recompute=recompute)
    device = values.device
    offsets = token_offsets((h, w), max_radius, device)
    geometry = {"rows": parent_tokens(size[0], h, device), "cols": parent_tokens(size[1], w, device),
                "radius": pixel_radius(params, size, max_radius)}
    b = values.shape[0]
    peak = values.new_full((b, 1, *size), _FLOOR)
    numerator, denominator = values.new_zeros(b, values.shape[1], *size), values.new_zeros(b, 1, *size)
    terms = token_terms(params, guide_lr)
    for start in range(0, len(offsets), chunk):
        args = (terms, guide, values, offsets[start:start + chunk], geometry, peak, numerator, denominator,
                max_elements)
        if recompute and torch.is_grad_enabled():
            peak, numerator, denominator = checkpoint(_stream_chunk, *args, use_reentrant=False)
        else:
            peak, numerator, denominator = _stream_chunk(*args)
    out = numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
    return _bilinear_where(_vanishing(peak, denominator, min_denominator), values, out)  # fallback: B, 1, H', W'


def _bilinear_where(fallback: torch.Tensor, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` with bilinear upsampling of ``values`` where ``fallback`` (B, 1, H', W') is set."""
    if bool(fallback.any()):
        bilinear = F.interpolate(values, size=out.shape[-2:], mode="bilinear", align_corners=False)
        out = torch.where(fallback, bilinear, out)
    return out


def _neighbours(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x (B, c, h, w) -> (B, r, w, c, K): for each token of the rows ``rows[:, 0]`` (clamped neighbour rows
    (r, K)) and every column, its K neighbours' entries (clamped neighbour columns (w, K))."""
    return x[:, :, rows[:, None, :], cols[None, :, :]].permute(0, 2, 3, 1, 4)


def spatial_patterns(dy: torch.Tensor, dx: torch.Tensor, cell: tuple[int, int],
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-u0^2 / 2, -v0^2 / 2 and -u0 v0, each (K, sy sx), for the offsets (dy, dx) and a cell's sy x sx pixels.

    (u0, v0) is the offset from a pixel t s + p to its neighbour's centre (t + d + 0.5) s - 0.5: independent of
    the token t, so these patterns serve every cell."""
    sy, sx = cell
    v0 = ((dy.to(dtype) + 0.5) * sy - 0.5)[:, None, None] - torch.arange(sy, device=dy.device, dtype=dtype)[:, None]
    u0 = ((dx.to(dtype) + 0.5) * sx - 0.5)[:, None, None] - torch.arange(sx, device=dx.device, dtype=dtype)
    return (-0.5 * u0 * u0).expand(-1, sy, sx).reshape(-1, sy * sx), \
        (-0.5 * v0 * v0).expand(-1, sy, sx).reshape(-1, sy * sx), (-u0 * v0).reshape(-1, sy * sx)


def _cell_rows(terms: torch.Tensor, guide_cells: torch.Tensor, values: torch.Tensor, radius_cells: torch.Tensor,
               token_rows: torch.Tensor, geometry: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of the cells of ``token_rows``: (B, r, w, C, sy sx), and where it falls back (B, r, w, 1, sy sx).

    guide_cells (B, r, w, 3, sy sx) and radius_cells (B, r, w, 1, sy sx) are those rows' pixels per cell. The
    log-weights (B, r, w, K, sy sx) are built in place from small factors: the spatial term as three
    products of a per-neighbour coefficient and a per-offset pattern, the range term
    |I - I_down|^2 = |I|^2 + |I_down|^2 - 2 I . I_down with the cross term one (K, 3) x (3, sy sx) product per cell
    (no (3, K, sy sx) difference is formed)."""
    dy, h = geometry["dy"], terms.shape[-2]
    rows = token_rows[:, None] + dy[None]  # r, K
    inside = ((rows >= 0) & (rows < h))[:, None, :] & geometry["inside_cols"][None]  # r, w, K
    rows = rows.clamp(0, h - 1)
    coef = _neighbours(terms, rows, geometry["cols"])  # B, r, w, 7, K: each neighbour's kernel and colour
    a, b, c, r = (t[..., None] for t in coef[:, :, :, :4].unbind(dim=3))  # B, r, w, K, 1
    colour = coef[:, :, :, 4:].transpose(-1, -2)  # B, r, w, K, 3
    u2, v2, uv = geometry["spatial"]  # K, sy sx each: -u0^2 / 2, -v0^2 / 2, -u0 v0
    logits = a * u2
    logits = logits.addcmul_(b, v2).addcmul_(c, uv)
    # range term, -r (|I|^2 + |I_down|^2 - 2 I . I_down): rounding ~1e-7 |I|^2 r, far below the kernel's scales
    squared = (guide_cells * guide_cells).sum(dim=3, keepdim=True) + (colour * colour).sum(dim=-1, keepdim=True)
    distance = torch.baddbmm(squared.flatten(0, 2), colour.flatten(0, 2), guide_cells.flatten(0, 2), alpha=-2)
    logits = logits.addcmul_(r, distance.view_as(logits), value=-1)
    allowed = inside[..., None] & (geometry["reach"][:, None] <= radius_cells)  # B, r, w, K, sy sx
    logits = logits.masked_fill_(~allowed, float("-inf"))
    peak = logits.amax(dim=3, keepdim=True).detach()  # the result does not depend on it
    weights = _exp_normal(logits - peak)
    denominator = weights.sum(dim=3, keepdim=True)  # B, r, w, 1, sy sx
    gathered = _neighbours(values, rows, geometry["cols"])  # B, r, w, C, K
    numerator = gathered @ weights  # B, r, w, C, sy sx: one small matmul per cell
    out = numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)
    return out, _vanishing(peak, denominator, geometry["min_denominator"])


def cell_upsample(values: torch.Tensor, guide: torch.Tensor, guide_lr: torch.Tensor, params: torch.Tensor, *,
                  max_radius: int = 8, min_denominator: float = 1e-6, max_elements: int = 1 << 26,
                  recompute: bool = False) -> torch.Tensor:
    """``bilateral_upsample`` for output sizes that are multiples of the grid (sy = H' / h, sx = W' / w).

    The pixels of one token's cell share their K neighbours, so the window needs no upsampled copies of the
    neighbours' coefficients (the streamed path's cost): the coefficients are gathered on the token grid, the
    offsets to the neighbours' centres depend only on the offset and the pixel's place in its cell, and the
    weighted sum is one (C, K) x (K, sy sx) product per cell. Rows of tokens are processed in chunks of at most
    ``max_elements`` log-weights (or gathered values); each chunk is exact on its own (no running maximum)."""
    (b, channels, h, w), (height, width) = values.shape, guide.shape[-2:]
    sy, sx = height // h, width // w
    device, dtype = values.device, values.dtype
    offsets = token_offsets((h, w), max_radius, device)
    dy, dx = offsets[:, 0], offsets[:, 1]
    cols = torch.arange(w, device=device)[:, None] + dx[None]  # w, K
    geometry = {
        "dy": dy, "cols": cols.clamp(0, w - 1), "inside_cols": (cols >= 0) & (cols < w),
        "spatial": spatial_patterns(dy, dx, (sy, sx), dtype),
        "reach": torch.maximum(dy.abs(), dx.abs()),  # the window radius an offset needs: K
        "min_denominator": min_denominator,
    }

    def cells(x: torch.Tensor) -> torch.Tensor:  # (B, c, H', W') -> (B, h, w, c, sy sx)
        return x.reshape(b, x.shape[1], h, sy, w, sx).permute(0, 2, 4, 1, 3, 5).reshape(b, h, w, x.shape[1], -1)

    terms = token_terms(params, guide_lr)
    guide_cells, radius_cells = cells(guide), cells(pixel_radius(params, (height, width), max_radius))
    per_row = w * len(offsets) * max(sy * sx * 3, channels)  # the largest tensor of one token row
    step = max(1, min(h, max_elements // per_row))
    outs, fallbacks = [], []
    for start in range(0, h, step):
        token_rows = torch.arange(start, min(h, start + step), device=device)
        args = (terms, guide_cells[:, start:start + step], values, radius_cells[:, start:start + step], token_rows,
                geometry)
        if recompute and torch.is_grad_enabled():
            out, fallback = checkpoint(_cell_rows, *args, use_reentrant=False)
        else:
            out, fallback = _cell_rows(*args)
        outs.append(out)
        fallbacks.append(fallback)

    def pixels(x: torch.Tensor) -> torch.Tensor:  # (B, h, w, c, sy sx) -> (B, c, H', W')
        return x.view(b, h, w, x.shape[3], sy, sx).permute(0, 3, 1, 4, 2, 5).reshape(b, x.shape[3], height, width)

    return _bilinear_where(pixels(torch.cat(fallbacks, dim=1)), values, pixels(torch.cat(outs, dim=1)))


@register_upsampler
class UpsampleAnything(Upsampler):
    """Upsample Anything: bilateral kernels per token, fitted to each image at test time, then applied to features.

    Args:
        in_channels: recorded only (any channel count is accepted).
        patch_size: unused (the kernels live on the token grid and the output grid).
        steps: Adam steps per image (51).
        lr: Adam's learning rate (0.1), decayed by gamma = (final_lr / lr)^(1 / decay_steps) per step.
        final_lr, decay_steps: the nominal end of the decay (1e-9 after 5100 steps).
        max_radius: the window is at most (2 R + 1)^2 tokens (R = 8: 289).
        init_sigma: initial sigma_x = sigma_y in output pixels (16); init_sigma_range: initial sigma_r (0.12).
        min_denominator: bilinear where the weights sum to less (1e-6).
        chunk: token offsets per streamed chunk (49).
        max_elements: gathered feature values per einsum (bounds memory for wide features).

    Shape:
        features (B, C, h, w) for any C, image (B, 3, H, W) -> (B, C, H', W'), fitted on the guidance resized to
        (H', W').
    """

    name = "upsample_anything"
    trainable = False

    def __init__(self, in_channels: int, patch_size: int, *, steps: int = 51, lr: float = 0.1, final_lr: float = 1e-9,
                 decay_steps: int = 5100, max_radius: int = 8, init_sigma: float = 16.0, init_sigma_range: float = 0.12,
                 min_denominator: float = 1e-6, chunk: int = 49, max_elements: int = 1 << 26) -> None:
        super().__init__(in_channels, patch_size)
        if steps < 0 or decay_steps < 1 or max_radius < 1 or chunk < 1 or max_elements < 1:
            raise ValueError(f"steps must be >= 0 and decay_steps, max_radius, chunk, max_elements >= 1; got {steps}, "
                             f"{decay_steps}, {max_radius}, {chunk}, {max_elements}")
        if min(lr, final_lr, init_sigma, init_sigma_range, min_denominator) <= 0:
            raise ValueError("lr, final_lr, init_sigma, init_sigma_range and min_denominator must be positive")
        self.steps, self.lr, self.gamma = steps, lr, (final_lr / lr) ** (1 / decay_steps)
        self.init = (math.log(init_sigma), math.log(init_sigma), 0.0, math.log(init_sigma_range))
        self.kernel_args = {"max_radius": max_radius, "chunk": chunk, "min_denominator": min_denominator,
                            "max_elements": max_elements}
        self.last_losses: list[float] = []  # the L1 of each fitting step of the last call (diagnostics)

    def initial_params(self, batch: int, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.init, dtype=torch.float32, device=like.device).view(1, 4, 1, 1).repeat(batch, 1, *grid)

    @torch.enable_grad()
    def fit(self, guide: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Kernels (B, 4, h, w) that upsample the bicubically downsampled guidance (B, 3, H', W') back to it."""
        guide = guide.detach()
        lr_rgb, guide_lr = resize(guide, grid, mode="bicubic"), resize(guide, grid)
        params = self.initial_params(guide.shape[0], grid, guide).requires_grad_(True)
        optimizer = torch.optim.Adam([params], lr=self.lr)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, self.gamma)
        self.last_losses = []
        pixels = guide.shape[0] * guide.shape[-2] * guide.shape[-1]
        if on_cells(tuple(guide.shape[-2:]), grid):  # bilateral_upsample's cell path
            recompute = pixels * len(token_offsets(grid, self.kernel_args["max_radius"], guide.device)) > _STORED_WINDOW
        else:
            recompute = pixels * self.kernel_args["chunk"] > _STORED_CHUNK
        for _ in range(self.steps):
            pred = bilateral_upsample(lr_rgb, guide, guide_lr, params, recompute=recompute, **self.kernel_args)
            loss = (pred - guide).abs().mean(dim=(1, 2, 3)).sum()  # each image's own mean L1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            self.last_losses.append(loss.item() / guide.shape[0])
        return params.detach()

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        grid = tuple(features.shape[-2:])
        with torch.autocast(features.device.type, enabled=False):
            guide = resize(image.float(), size).clamp(0, 1)
            params = self.fit(guide, grid)
            out = bilateral_upsample(features.float(), guide, resize(guide, grid), params, **self.kernel_args)
        return out.to(features.dtype)

    def _check_inputs(self, features: torch.Tensor, image: torch.Tensor) -> None:
        """The base checks for this call's channel count (the kernels never see the channels)."""
        channels = features.shape[1] if features.ndim == 4 else self.in_channels
        saved, self.in_channels = self.in_channels, channels
        try:
            super()._check_inputs(features, image)
        finally:
            self.in_channels = saved

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, steps={self.steps}, any channel count"
