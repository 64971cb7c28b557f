"""Cross-scale neighbourhood attention: each output pixel attends to the kernel x kernel tokens around its parent.

Queries q (B, D, Ho, Wo) live on the output grid, keys k (B, D, h, w) and values v (B, C, h, w) on the token grid.
Output pixel (y, x) has the parent token (floor(y h / Ho), floor(x w / Wo)); its window starts kernel // 2 tokens
before the parent, shifted inwards at the borders so that it never shrinks (``window_starts``). Heads split D; the
values are either split into one channel group per head (NAF) or weighted by the mean of the heads' weights
(``average_heads``: AnyUp). ``neighbourhood_attention_reference`` is the pure-PyTorch definition (fallback and test
oracle); ``neighbourhood_attention`` runs the fused torch_wrc op when it is available, which never materialises the
(Ho Wo k^2) gathered keys and values that autograd keeps for the reference (about 200 KB per output pixel at NAF's
shapes) and recomputes the weights in its backward.
"""

from __future__ import annotations

import functools
import math

import torch

from wrc.ops.extension import extension_enabled

FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_attention_maps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, average_heads: bool) -> None:
    """q (B, D, Ho, Wo), k (B, D, h, w), v (B, C, h, w) and heads that divide them; names the argument at fault
    (shared by every cross-space attention, wrc.layers.cross_attention)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be a (B, channels, H, W) map; got shape {tuple(t.shape)}")
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} need the same batch and channels")
    if v.shape[0] != k.shape[0] or v.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"v {tuple(v.shape)} must be on the keys' grid {tuple(k.shape[-2:])}")
    if heads < 1 or q.shape[1] % heads:
        raise ValueError(f"heads={heads} must divide the query/key channels {q.shape[1]}")
    if not average_heads and v.shape[1] % heads:
        raise ValueError(f"heads={heads} must divide the value channels {v.shape[1]} (average_heads=False)")


def check_neighbourhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: int, heads: int,
                                  average_heads: bool) -> None:
    """Validate shapes and settings, naming the argument at fault."""
    check_attention_maps(q, k, v, heads, average_heads)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be odd and >= 1; got {kernel}")
    h, w = k.shape[-2:]
    if h < kernel or w < kernel:
        raise ValueError(f"a {kernel} x {kernel} neighbourhood needs at least {kernel} tokens per side; the grid is "
                         f"{h} x {w} (use a smaller kernel or a larger input)")


def window_starts(n_out: int, n_tokens: int, kernel: int) -> torch.Tensor:
    """First token of each output position's window: its parent token floor(i * n_tokens / n_out) minus
    kernel // 2, shifted into [0, n_tokens - kernel] at the borders (the window never shrinks)."""
    parent = torch.arange(n_out) * n_tokens // n_out
    return (parent - kernel // 2).clamp(0, n_tokens - kernel)


def neighbourhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: int = 9, heads: int = 4, *,
                            average_heads: bool = False, scale: float | None = None,
                            chunk_rows: int | None = None) -> torch.Tensor:
    """Neighbourhood attention through the fused torch_wrc op when available, else the reference.

    Args:
        q: (B, D, Ho, Wo) queries on the output grid.
        k: (B, D, h, w) keys and v: (B, C, h, w) values on the token grid (h, w >= kernel).
        kernel: odd window side, in tokens.
        heads: divides D (and C unless ``average_heads``).
        average_heads: weight all channels by the mean of the heads' weights instead of one channel group per head.
        scale: logit scale, 1 / sqrt(D / heads) by default.
        chunk_rows: output rows per chunk of the reference (its memory bound); the fused op needs none.

    Returns:
        (B, C, Ho, Wo).
    """
    check_neighbourhood_attention(q, k, v, kernel, heads, average_heads)
    scale = 1 / math.sqrt(q.shape[1] // heads) if scale is None else float(scale)
    if q.dtype in FUSED_DTYPES and q.dtype == k.dtype == v.dtype and extension_enabled(q.device) and _has_fused_op():
        return torch.ops.wrc.neighbourhood_attention(q, k, v, kernel, heads, average_heads, scale)
    return neighbourhood_attention_reference(q, k, v, kernel, heads, average_heads=average_heads, scale=scale,
                                             chunk_rows=chunk_rows)


@functools.cache
def _has_fused_op() -> bool:
    """Whether the loaded torch_wrc library defines the op (one built from older sources does not)."""
    return hasattr(torch.ops.wrc, "neighbourhood_attention")


def neighbourhood_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: int = 9,
                                      heads: int = 4, *, average_heads: bool = False, scale: float | None = None,
                                      chunk_rows: int | None = None) -> torch.Tensor:
    """The definition, as a gather: keys and values are gathered per token window once on the token grid, then
    indexed by each output row's parent, ``chunk_rows`` output rows at a time (default: as many as keep the
    gathered keys near 64 MB). Autograd keeps every chunk's gathered windows for the backward pass."""
    check_neighbourhood_attention(q, k, v, kernel, heads, average_heads)
    b, d, ho, wo = q.shape
    h, w = k.shape[-2:]
    c, dh = v.shape[1], d // heads
    scale = 1 / math.sqrt(dh) if scale is None else scale
    taps = torch.arange(kernel, device=q.device)
    rows = window_starts(ho, h, kernel).to(q.device)[:, None] + taps  # Ho, k
    cols = window_starts(wo, w, kernel).to(q.device)[:, None] + taps  # Wo, k
    keys = k.view(b, heads, dh, h, w)
    values = v.view(b, 1, c, h, w) if average_heads else v.view(b, heads, c // heads, h, w)
    if chunk_rows is None:
        per_row = b * (d + values.shape[1] * values.shape[2]) * wo * kernel * kernel * q.element_size()
        chunk_rows = max(1, (64 << 20) // max(per_row, 1))
    out = q.new_empty(b, c, ho, wo)
    for start in range(0, ho, chunk_rows):
        r = rows[start:start + chunk_rows]  # n, k
        window = (r[:, None, :, None], cols[None, :, None, :])  # -> n, Wo, k, k
        key_win = keys[:, :, :, window[0], window[1]]  # B, heads, dh, n, Wo, k, k
        query = q[:, :, start:start + chunk_rows].reshape(b, heads, dh, len(r), wo, 1, 1)
        logits = (query * key_win).sum(dim=2).flatten(-2) * scale  # B, heads, n, Wo, k*k
        weights = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(q.dtype)
        if average_heads:
            weights = weights.mean(dim=1, keepdim=True)  # B, 1, n, Wo, k*k
        value_win = values[:, :, :, window[0], window[1]].flatten(-2)  # B, G, c_g, n, Wo, k*k
        part = (weights.unsqueeze(2) * value_win).sum(dim=-1)  # B, G, c_g, n, Wo
        out[:, :, start:start + chunk_rows] = part.reshape(b, c, len(r), wo)
    return out
