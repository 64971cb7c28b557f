"""NAF: neighbourhood attention filtering (Chambon, Couairon et al., CVPR 2026; arXiv 2511.18452).

Queries and keys come from the image alone, so the weights never see the backbone: one trained NAF serves any
backbone and any channel count (divisible by the heads). A two-branch encoder (a per-pixel 1x1 branch and a 3x3
context branch of GN-SiLU blocks with biases and no residual) encodes the ImageNet-normalised guidance; the
encoding is average-pooled to the output grid and rotated by a fixed axial RoPE (the queries), and the rotated
queries are average-pooled to the token grid (the keys). Each output pixel then attends to the 9 x 9 tokens
around its parent token (shifted at the borders), one softmax per head, each head's weights applied to its own
group of C / heads channels of the raw features: the output is, per channel group, a convex combination of
tokens. Attention and RoPE have no parameters (662,528 in all, all in the encoder; modern_peers.md section 4).

Guidance cap: a guidance image larger than ``guidance_cap`` times the output is first resized down to that
(training uses 128 px guidance for a 32 x 32 output). Here the cap is per axis, (min(H, 4 H'), min(W, 4 W')),
and the resize is antialiased (the framework's ``resize``); the original caps both sides at 4 min(H', W') with
plain bilinear sampling. The two agree for square outputs up to the antialiasing.

The 9 x 9 window needs a token grid of at least 9 x 9 (a 126 px image at patch 14): smaller grids are an error
rather than a silently smaller window (a kernel of 6 on small images is what broke a reported reproduction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.cross_attention import neighbourhood_attention
from wrc.layers.encoders import GROUPS, ConvEncoder
from wrc.layers.guidance import GuidanceNormalize
from wrc.layers.rope import AxialRope
from wrc.upsamplers.base import Upsampler, register_upsampler, resize


def capped_guidance_size(image_size: tuple[int, int], output_size: tuple[int, int],
                         cap: float) -> tuple[int, int]:
    """The guidance grid: each side at most ``cap`` times the output's (the image's own size when smaller)."""
    return (min(image_size[0], int(cap * output_size[0])), min(image_size[1], int(cap * output_size[1])))


@register_upsampler
class NAF(Upsampler):
    """NAF upsampler: image-only queries and keys, parameter-free k x k neighbourhood attention over the tokens.

    Channel-agnostic: ``in_channels`` only records the backbone it was configured with; features of any
    channel count divisible by ``heads`` are accepted (the weights never see them).

    Args:
        in_channels: backbone channels C (recorded; any multiple of ``heads`` is accepted at run time).
        patch_size: backbone patch size (unused: the encoder works at the guidance resolution).
        dim: query/key width; each encoder branch has dim / 2 channels (256 in the paper).
        heads: attention heads; queries/keys split into heads of dim / heads, values into C / heads channels.
        rope_heads: heads of the axial RoPE (each rotates dim / rope_heads channels).
        kernel: odd neighbourhood size in tokens (9); the token grid needs at least this many per side.
        rope_base: base of the RoPE periods base^(i / (D_head / 4)).
        rope_rescale: train-time coordinate rescale r, coordinates times exp(U(-ln r, ln r)); 1 disables it.
        guidance_cap: the guidance is resized to at most this many times the output per side.
        blocks: GN-SiLU blocks per encoder branch.
        chunk_rows: output rows per attention chunk (None: about 64 MB of gathered keys at a time).

    Shape:
        features (B, C, h, w) with h, w >= kernel, image (B, 3, H, W) -> (B, C, H', W') for any H', W'.
    """

    name = "naf"
    any_backbone = True  # the weights never see the features

    def __init__(self, in_channels: int, patch_size: int, *, dim: int = 256, heads: int = 4, rope_heads: int = 4,
                 kernel: int = 9, rope_base: float = 100.0, rope_rescale: float = 2.0, guidance_cap: float = 4.0,
                 blocks: int = 2, chunk_rows: int | None = None) -> None:
        super().__init__(in_channels, patch_size)
        if dim % (2 * GROUPS):
            raise ValueError(f"dim={dim} must be a multiple of {2 * GROUPS} (two branches of GroupNorm({GROUPS}))")
        if heads < 1 or dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        if in_channels % heads:
            raise ValueError(f"heads={heads} must divide in_channels={in_channels} (values split into heads)")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd number of tokens >= 1; got {kernel}")
        if guidance_cap <= 0:
            raise ValueError(f"guidance_cap must be positive (times the output size); got {guidance_cap}")
        self.heads, self.kernel, self.guidance_cap, self.chunk_rows = heads, kernel, guidance_cap, chunk_rows
        self.normalize = GuidanceNormalize()
        branch = dim // 2
        self.pixel_branch = ConvEncoder(3, branch, 1, blocks=blocks, residual=False, bias=True)
        self.context_branch = ConvEncoder(3, branch, 3, blocks=blocks, residual=False, bias=True)
        self.rope = AxialRope(dim, rope_heads, base=rope_base, rescale=rope_rescale)

    def queries(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Rotated image encoding on the output grid: (B, 3, H, W) -> (B, dim, H', W')."""
        guide_size = capped_guidance_size(tuple(image.shape[-2:]), size, self.guidance_cap)
        guide = self.normalize(resize(image, guide_size))
        encoding = torch.cat([self.pixel_branch(guide), self.context_branch(guide)], dim=1)  # B, dim, Hg, Wg
        return self.rope(F.adaptive_avg_pool2d(encoding, size))  # B, dim, H', W'

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        h, w = features.shape[-2:]
        if h < self.kernel or w < self.kernel:
            raise ValueError(f"NAF's {self.kernel} x {self.kernel} neighbourhood needs a token grid of at least "
                             f"{self.kernel} per side; got {h} x {w} (a larger image, or model.kernel <= {min(h, w)} "
                             "at a cost in quality)")
        q = self.queries(image, size)  # B, dim, H', W'
        k = F.adaptive_avg_pool2d(q, (h, w))  # B, dim, h, w: each key averages the rotated queries of its token
        dtype = torch.promote_types(q.dtype, features.dtype)  # bf16 queries under autocast, full-precision values
        out = neighbourhood_attention(q.to(dtype), k.to(dtype), features.to(dtype), self.kernel, self.heads,
                                      average_heads=False, chunk_rows=self.chunk_rows)
        return out.to(features.dtype)

    def _check_inputs(self, features: torch.Tensor, image: torch.Tensor) -> None:
        """The base checks (any channel count), and channels divisible by the heads (values are split per head)."""
        if features.ndim == 4 and features.shape[1] % self.heads:
            raise ValueError(f"features must have a channel count divisible by heads={self.heads} for NAF (values "
                             f"split into heads); got shape {tuple(features.shape)}")
        super()._check_inputs(features, image)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, kernel={self.kernel}, any channel count"
