"""Attention whose weights come from one space and whose values from another: the core of today's upsamplers.

Queries live on the output grid (from the image), keys on the token grid, values are the backbone's tokens
themselves, so the output stays in the backbone's feature space (a convex combination of tokens per head).
Three neighbourhoods (shared/reference/modern_peers.md section 9.4-9.5):

- global (JAFAR, LoftUp): every token, with query chunking so that peak memory is bounded by the chunk, not by
  the output size (JAFAR's users run out of memory at 672 px on 48 GB without it);
- a window that is a fraction of the image (AnyUp's mask, ``window_mask``), through the same global path;
- the k x k tokens around each output pixel's parent token, shifted at the borders (cross-scale neighbourhood
  attention: NAF, AnyUp's NATTEN option), ``neighbourhood_attention`` from wrc.ops.neighbourhood_attention: the
  fused torch_wrc op when built, else its pure-PyTorch gather reference.

Heads: ``average_heads=True`` applies the mean of the heads' weights to all channels (JAFAR, AnyUp: one map per
pixel serves every channel); False splits the channels into one group per head (NAF). Shapes are maps:
q (B, D, Ho, Wo), k (B, D, h, w), v (B, C, h, w) -> (B, C, Ho, Wo).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from wrc.ops.neighbourhood_attention import (  # noqa: F401  (neighbourhood_attention: NAF, AnyUp)
    check_attention_maps,
    neighbourhood_attention,
    window_starts,
)

DEFAULT_CHUNK = 4096  # output pixels per chunk: (chunk x tokens x heads) logits at a time


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads * d, H, W) -> (B, heads, H * W, d)."""
    b, c, h, w = x.shape
    return x.reshape(b, heads, c // heads, h * w).transpose(-1, -2)


def global_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int = 4, *,
                     average_heads: bool = True, scale: float | None = None, chunk: int = DEFAULT_CHUNK,
                     mask: Callable[[slice], torch.Tensor] | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v over all tokens (or those ``mask(rows)`` allows), chunked over output pixels.

    ``mask(pixels)`` returns the (n_pixels, h * w) boolean mask of the output pixels ``pixels`` (a slice of the
    row-major output); every pixel must see at least one token. Runs through scaled_dot_product_attention.
    """
    check_attention_maps(q, k, v, heads, average_heads)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 output pixels; got {chunk}")
    b, d, ho, wo = q.shape
    c = v.shape[1]
    scale = 1 / math.sqrt(d // heads) if scale is None else scale
    qh, kh = _split_heads(q, heads), _split_heads(k, heads)  # B, heads, N, d
    tokens = v.flatten(2).transpose(1, 2)  # B, N_l, C
    vh = tokens.unsqueeze(1).expand(b, heads, -1, c) if average_heads else _split_heads(v, heads)
    out = q.new_empty(b, ho * wo, c)
    for start in range(0, ho * wo, chunk):
        pixels = slice(start, min(start + chunk, ho * wo))
        allowed = None if mask is None else mask(pixels).to(q.device)
        part = F.scaled_dot_product_attention(qh[:, :, pixels], kh, vh, attn_mask=allowed, scale=scale)
        # B, heads, n, C (averaged) or C / heads (split)
        out[:, pixels] = part.mean(dim=1) if average_heads else part.transpose(1, 2).reshape(b, -1, c)
    return out.transpose(1, 2).reshape(b, c, ho, wo)


def separable_mask(rows: torch.Tensor, cols: torch.Tensor) -> Callable[[slice], torch.Tensor]:
    """A mask for ``global_attention`` from per-axis masks rows (Ho, h) and cols (Wo, w): pixel (y, x) sees token
    (i, j) iff rows[y, i] and cols[x, j]."""
    (_, h), (wo, w) = rows.shape, cols.shape

    def mask(pixels: slice) -> torch.Tensor:
        index = torch.arange(pixels.start, pixels.stop)
        return (rows[index // wo][:, :, None] & cols[index % wo][:, None, :]).reshape(len(index), h * w)

    return mask


def window_mask(output_size: tuple[int, int], grid: tuple[int, int], ratio: float) -> Callable[[slice], torch.Tensor]:
    """AnyUp's window: the pixel whose centre is at p = (y + 0.5) / Ho sees token rows [floor(clamp(p - ratio) h),
    ceil(clamp(p + ratio) h)) (clamped to [0, 1]), columns likewise: a fraction of the image, not a token count."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1] (a fraction of the image side); got {ratio}")
    (ho, wo), (h, w) = output_size, grid

    def axis(n_out: int, n_tokens: int) -> torch.Tensor:
        centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) / n_out
        low = torch.floor((centre - ratio).clamp(0, 1) * n_tokens)
        high = torch.ceil((centre + ratio).clamp(0, 1) * n_tokens)
        token = torch.arange(n_tokens, dtype=torch.float64)
        return (token >= low[:, None]) & (token < high[:, None])  # n_out, n_tokens

    return separable_mask(axis(ho, h), axis(wo, w))


def neighbourhood_mask(output_size: tuple[int, int], grid: tuple[int, int],
                       kernel: int) -> Callable[[slice], torch.Tensor]:
    """The neighbourhood of ``neighbourhood_attention`` as a mask for ``global_attention`` (its oracle in tests,
    and a way to see which tokens a pixel uses)."""
    (ho, wo), (h, w) = output_size, grid
    row_start, col_start = window_starts(ho, h, kernel), window_starts(wo, w, kernel)
    tokens_h, tokens_w = torch.arange(h), torch.arange(w)
    rows = (tokens_h >= row_start[:, None]) & (tokens_h < row_start[:, None] + kernel)
    cols = (tokens_w >= col_start[:, None]) & (tokens_w < col_start[:, None] + kernel)
    return separable_mask(rows, cols)
