"""LoftUp: a coordinate-and-colour query transformer over the tokens (Huang et al., ICCV 2025; arXiv 2504.14032),
implemented from shared/reference/modern_peers.md section 3.

Every output pixel is a query built from its own coordinates and colour; it cross-attends, globally, to the
LayerNorm'd tokens plus a positional code, through two pre-LN transformer layers with full projections:

    x0 = MinMax(I)                                 per channel over the batch and space: (x - min) / range - 0.5
    x1 = [Fourier([row, col, x0]), x0]             20 frequencies e^linspace(-2, 10), learned phases: 203 maps
    q  = ReLU(BN(conv3x3(ReLU(BN(conv3x3(LN(x1)))))))      full resolution, D = C + 20 channels
    kv = [LN(F), Fourier([row, col] of the token grid)]    5 frequencies: the 20 extra channels
    q  = q + MHA(LN(q), LN(kv), LN(kv));  q = q + FFN(q)   twice (4 heads, FFN = LN, D -> C, GELU, C -> D)
    out = channel-LN(conv1x1(LN(q)))               back to C channels, eps 1e-6

The output is a learned transform of the features (LayerNorm'd), not a convex combination of tokens, and its size
is the guidance size: another output size is the guidance image resized to it (as the original asks its users
to do). Backbone-specific: built for one channel count C (a model for DINOv2-S has 4,303,894 parameters).

Decisions where the description leaves a choice:
- MinMax is over the batch by default (the paper's: an image's output depends on its batch mates);
  ``minmax="image"`` makes it per image. MinMax per channel is invariant to a per-channel affine map, so the
  [0, 1] image gives the same x0 as the ImageNet-normalised one the original sees (up to its 1e-4 range floor).
- The token code reuses LoftUp's Fourier layout with 2 inputs and 5 frequencies (its 20 learned phases).
- The transformer runs ``chunk`` query pixels at a time through both layers (the key and value projections of
  the tokens are computed once per layer): memory for attention is bounded by the chunk, not by the output size
  (the original has no chunking: O(N_out N_tokens) per layer). The result does not depend on the chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.cross_attention import DEFAULT_CHUNK, global_attention
from wrc.layers.fourier import FourierFeatures, coordinate_grid, minmax_scale
from wrc.upsamplers.base import Upsampler, register_upsampler, resize

MINMAX = ("batch", "image")


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, at every pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CrossAttentionLayer(nn.Module):
    """q + MHA(LN(q), LN(kv), LN(kv)), then q + FFN(q): a pre-LN decoder layer without self-attention.

    The projections live in an ``nn.MultiheadAttention`` (the original's parameter layout); the attention itself
    runs through ``global_attention`` so that it can be chunked over queries.
    """

    def __init__(self, dim: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def keys_values(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token sequence (B, N, D) -> key and value maps (B, D, N, 1), projected once for every query chunk."""
        _, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        _, b_k, b_v = self.attn.in_proj_bias.chunk(3)
        kv = self.norm_kv(kv)
        return tuple(F.linear(kv, w, b).transpose(1, 2).unsqueeze(-1) for w, b in ((w_k, b_k), (w_v, b_v)))

    def forward(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Queries (B, n, D) against the maps of ``keys_values`` -> (B, n, D)."""
        w_q, b_q = self.attn.in_proj_weight.chunk(3)[0], self.attn.in_proj_bias.chunk(3)[0]
        query = F.linear(self.norm_q(q), w_q, b_q).transpose(1, 2).unsqueeze(-1)  # B, D, n, 1
        mixed = global_attention(query, keys, values, self.heads, average_heads=False, chunk=q.shape[1])
        q = q + self.attn.out_proj(mixed.squeeze(-1).transpose(1, 2))  # B, n, D
        return q + self.ffn(q)


@register_upsampler
class LoftUp(Upsampler):
    """LoftUp upsampler: Fourier queries of (row, col, RGB), two cross-attention layers over all tokens.

    Args:
        in_channels: backbone channels C (the model is built for this count).
        patch_size: backbone patch size (unused: the queries come from the guidance pixels).
        num_frequencies: Fourier frequencies of the queries (20).
        token_frequencies: Fourier frequencies of the token grid's code (5); D = C + 4 x this.
        heads: attention heads (4); must divide D.
        layers: cross-attention layers (2).
        minmax: "batch" (the paper's: statistics over the batch) or "image" (per image).
        chunk: query pixels per pass through the transformer (bounds attention memory).

    Shape:
        features (B, C, h, w), image (B, 3, H, W) -> (B, C, H', W'), the guidance resized to (H', W').
    """

    name = "loftup"

    def __init__(self, in_channels: int, patch_size: int, *, num_frequencies: int = 20, token_frequencies: int = 5,
                 heads: int = 4, layers: int = 2, minmax: str = "batch", chunk: int = DEFAULT_CHUNK) -> None:
        super().__init__(in_channels, patch_size)
        dim = in_channels + 4 * token_frequencies
        if num_frequencies < 1 or token_frequencies < 1 or layers < 1:
            raise ValueError(f"num_frequencies, token_frequencies and layers must be >= 1; got {num_frequencies}, "
                             f"{token_frequencies}, {layers}")
        if heads < 1 or dim % heads:
            raise ValueError(f"heads={heads} must divide the transformer width C + 4 x token_frequencies = {dim}")
        if minmax not in MINMAX:
            raise ValueError(f"minmax={minmax!r}; expected one of {MINMAX}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 query pixels; got {chunk}")
        self.dim, self.minmax, self.chunk = dim, minmax, chunk
        self.feature_norm = ChannelNorm(in_channels)
        self.fourier = FourierFeatures(5, num_frequencies)
        queries = self.fourier.out_channels + 3
        self.first_conv = nn.Sequential(
            ChannelNorm(queries),
            nn.Conv2d(queries, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU(),
        )
        self.token_code = FourierFeatures(2, token_frequencies)
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, in_channels, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)
        self.final_conv = nn.Sequential(nn.Conv2d(dim, in_channels, 1), ChannelNorm(in_channels, eps=1e-6))

    def queries(self, image: torch.Tensor) -> torch.Tensor:
        """Guidance (B, 3, H, W) in [0, 1] -> query maps (B, D, H, W)."""
        colour = minmax_scale(image, over_batch=self.minmax == "batch")
        coords = coordinate_grid(*image.shape[-2:], image).expand(image.shape[0], -1, -1, -1)
        encoded = self.fourier(torch.cat([coords, colour], dim=1))  # B, 200, H, W
        return self.first_conv(torch.cat([encoded, colour], dim=1))

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, C, h, w) -> key/value sequence (B, h w, D): LayerNorm'd features and the grid's code."""
        code = self.token_code(coordinate_grid(*features.shape[-2:], features)).expand(features.shape[0], -1, -1, -1)
        return torch.cat([self.feature_norm(features), code], dim=1).flatten(2).transpose(1, 2)

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        guide = resize(image, size).clamp(0, 1)
        q = self.queries(guide).flatten(2).transpose(1, 2)  # B, H' W', D
        kv = self.tokens(features.to(q.dtype))
        projected = [layer.keys_values(kv) for layer in self.layers]
        chunks = []
        for start in range(0, q.shape[1], self.chunk):
            x = q[:, start:start + self.chunk]
            for layer, (keys, values) in zip(self.layers, projected, strict=True):
                x = layer(x, keys, values)
            chunks.append(self.final_norm(x))
        out = torch.cat(chunks, dim=1).transpose(1, 2).reshape(q.shape[0], self.dim, *size)
        return self.final_conv(out).to(features.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dim={self.dim}, minmax={self.minmax!r}"
