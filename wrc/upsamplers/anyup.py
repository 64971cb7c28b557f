"""AnyUp: JAFAR's skeleton made feature-agnostic and local (Wimmer et al., ICLR 2026; arXiv 2510.12764),
implemented from shared/reference/modern_peers.md section 2.

The guidance side (image encoder, learned pair encoding, query and key encoders, pooling) is JAFAR's
(``wrc.upsamplers.jafar.GuidanceEncoder``); four changes:

1. no GroupNorm on the queries: Q = conv3x3(pool_{Ho,Wo}(Enc_q(E)));
2. the key path reads **any channel count**: learned feature unification (a bank of 5x5 filters, softmax over
   filters, mean over channels; ``wrc.layers.unification``) then two GN-SiLU residual blocks;
3. concatenation keys: K = Agg([pool_{h,w}(Enc_k(E)), LFU branch]), Agg = conv3x3 (2D -> D, reflect) + 2 blocks;
4. windowed attention: ``attention="window"`` (default, the paper's operator) lets the pixel whose centre is at
   p see the tokens within +-``window_ratio`` of the image side (clamped to the image, so windows shrink at the
   borders: 7-8 tokens per axis inside a 32-token side); ``attention="neighbourhood"`` is the NATTEN option, the
   k x k tokens around the pixel's parent token shifted at the borders, k = odd(max(3, round(2 ratio n))) with n
   the grid's shorter side (7 at 32 tokens, 3 at 16). The two are different operators (the original's README
   says so); the window is the default to match the paper.
Heads' weights are averaged and applied to the raw features, as in JAFAR.

One model serves every backbone: the features' channel count may differ from ``in_channels`` (which only records
the backbone it was built for). 845,056 parameters, whatever C: the reference's 878,080 counts the multi-head
attention's value and output projections (16,512 each), computed and discarded by the original, not built here.
"""

from __future__ import annotations

import torch
from torch import nn

from wrc.layers.cross_attention import DEFAULT_CHUNK, global_attention, neighbourhood_attention, window_mask
from wrc.layers.encoders import GNSiLUBlock, conv
from wrc.layers.unification import FeatureUnification
from wrc.upsamplers.base import Upsampler, register_upsampler
from wrc.upsamplers.jafar import GuidanceEncoder, QueryKeyProjection, check_widths

ATTENTIONS = ("window", "neighbourhood")


def neighbourhood_kernel(grid: tuple[int, int], window_ratio: float) -> int:
    """AnyUp's NATTEN kernel for a token grid: odd(max(3, round(2 * ratio * n))), n the shorter side."""
    kernel = max(3, round(2 * window_ratio * min(grid)))
    return kernel if kernel % 2 else kernel + 1


@register_upsampler
class AnyUp(Upsampler):
    """AnyUp: any backbone, any channel count, any output size.

    Args:
        in_channels: channels of the backbone it is built for (recorded only: any C is accepted at run time).
        patch_size: backbone patch size (unused by the architecture).
        dim: query/key width D (128).
        heads: attention heads, whose weights are averaged (4).
        kernel_size: kernel of the guidance encoders (1).
        lfu_kernel: side of the unification filters (5).
        window_ratio: half-width of the attention window as a fraction of the image side (0.1).
        attention: "window" (the paper's masked window) or "neighbourhood" (the NATTEN option).
        chunk_size: output pixels per attention chunk in window mode (bounds memory; no effect on the result).

    Shape:
        features (B, C, h, w) with any C, image (B, 3, H, W) in [0, 1] -> (B, C, Ho, Wo); default (H, W).
    """

    name = "anyup"
    any_backbone = True  # the feature unification reads any channel count: one model for every backbone
    scale = None

    def __init__(self, in_channels: int, patch_size: int, *, dim: int = 128, heads: int = 4, kernel_size: int = 1,
                 lfu_kernel: int = 5, window_ratio: float = 0.1, attention: str = "window",
                 chunk_size: int = DEFAULT_CHUNK) -> None:
        super().__init__(in_channels, patch_size)
        check_widths(dim, heads)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention={attention!r}; expected one of {ATTENTIONS}")
        if not 0 < window_ratio <= 1:
            raise ValueError(f"window_ratio must be in (0, 1] (a fraction of the image side); got {window_ratio}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 output pixels; got {chunk_size}")
        self.heads, self.window_ratio, self.attention, self.chunk_size = heads, window_ratio, attention, chunk_size
        self.guidance = GuidanceEncoder(dim, kernel_size)
        self.query_conv = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.unification = FeatureUnification(dim, lfu_kernel)
        self.unified_encoder = nn.Sequential(GNSiLUBlock(dim), GNSiLUBlock(dim))
        self.aggregate = nn.Sequential(conv(2 * dim, dim, 3, bias=False), GNSiLUBlock(dim), GNSiLUBlock(dim))
        self.projection = QueryKeyProjection(dim, in_proj_rows=3 * dim)

    def _check_inputs(self, features: torch.Tensor, image: torch.Tensor) -> None:
        """The base class's checks (any channel count: the unification reads any C) and at least 2 x 2 tokens."""
        if features.ndim == 4 and (features.shape[-2] < 2 or features.shape[-1] < 2):
            raise ValueError(f"'anyup' needs at least 2 x 2 tokens (its 3x3 key aggregation pads by reflection); "
                             f"got a {features.shape[-2]} x {features.shape[-1]} grid")
        super()._check_inputs(features, image)

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        grid = tuple(features.shape[-2:])
        queries, pooled = self.guidance(image, size, grid)
        queries = self.query_conv(queries)  # B, D, Ho, Wo
        unified = self.unified_encoder(self.unification(features.to(pooled.dtype)))  # B, D, h, w
        keys = self.aggregate(torch.cat([pooled, unified], dim=1))  # B, D, h, w
        q, k = self.projection(queries, keys)
        values = features.to(q.dtype)
        if self.attention == "neighbourhood":
            kernel = neighbourhood_kernel(grid, self.window_ratio)
            out = neighbourhood_attention(q, k, values, kernel, self.heads, average_heads=True)
        else:
            mask = window_mask(tuple(size), grid, self.window_ratio)
            out = global_attention(q, k, values, self.heads, average_heads=True, chunk=self.chunk_size, mask=mask)
        return out.to(features.dtype)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, heads={self.heads}, attention={self.attention}, "
                f"window_ratio={self.window_ratio}, chunk_size={self.chunk_size}")
