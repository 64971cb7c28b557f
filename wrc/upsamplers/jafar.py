"""JAFAR: one global cross-attention from image queries to feature-modulated keys (Couairon et al., 2025;
arXiv 2506.11136), implemented from shared/reference/modern_peers.md section 1.

Every output pixel is a convex combination of the backbone's raw tokens, so the output stays in the backbone's
feature space. The weights come from the image alone on the query side and from the image modulated by the
features on the key side:

    E  = RoPE(Enc_img(normalize(I)))                          1x1 encoders, D = 128, at the guidance resolution
    Q  = conv3x3(GN(pool_{Ho,Wo}(Enc_q(E))))                  non-affine GroupNorm, zero padding, no bias
    K  = gamma(S) * GN(pool_{h,w}(Enc_k(E))) + beta(S),  S = Enc_f(L2norm(F))     SFT, 1x1 gamma and beta
    A  = mean_heads softmax(W_q RMS(Q) . W_k RMS(K) / sqrt(D / heads))           4 heads of 32
    out = A F                                                  the raw features, one map for every channel

Decisions where the description leaves a choice:
- The original's multi-head attention also computes a value projection (C -> 128, with an RMSNorm on the values)
  and an output projection, then discards both: only the averaged weights are used. They are **not built** here
  (they would never receive a gradient), so a model has 628,480 - 49,280 - 16,512 - 384 = 562,304 parameters for
  C = 384 instead of the reference's 628,480. Loading an original checkpoint therefore maps its keys and drops
  those three tensors, which do not touch the output.
- The features are L2-normalised per position over channels *before* the key-feature encoder (modern_peers.md
  section 9.7: "L2 normalisation of F before the key path").
- Attention runs in chunks of ``chunk_size`` output pixels (the original has no chunking and runs out of memory
  at 672 px on 48 GB); the result does not depend on the chunk size.
- The query and key projections are initialised as PyTorch's multi-head attention initialises its in-projection
  (Xavier-uniform weights, zero biases). The key bias shifts every logit of a query equally, so softmax ignores it:
  it is kept for the parameter layout and receives only rounding-level gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.cross_attention import DEFAULT_CHUNK, global_attention
from wrc.layers.encoders import GROUPS, ConvEncoder
from wrc.layers.guidance import GuidanceNormalize
from wrc.layers.rope import LearnedPairRope
from wrc.upsamplers.base import Upsampler, register_upsampler


def check_widths(dim: int, heads: int) -> None:
    """The query/key width must split into heads and suit the 8-group norms and the pair encoding."""
    if dim < 8 or dim % GROUPS or dim % 4:
        raise ValueError(f"dim must be a multiple of {GROUPS} and of 4 (GroupNorm groups, rotary pairs); got {dim}")
    if heads < 1 or dim % heads:
        raise ValueError(f"heads={heads} must divide dim={dim}")


class GuidanceEncoder(nn.Module):
    """JAFAR's image side, shared with AnyUp: the ImageNet-normalised image through a per-pixel encoder, the learned
    pair encoding, then a query and a key encoder, average-pooled to the output grid and to the token grid.

    Shape:
        image (B, 3, H, W) in [0, 1] -> queries (B, D, Ho, Wo), keys (B, D, h, w).
    """

    def __init__(self, dim: int = 128, kernel_size: int = 1) -> None:
        super().__init__()
        self.normalize = GuidanceNormalize()
        self.image_encoder = ConvEncoder(3, dim, kernel_size)
        self.rope = LearnedPairRope(dim)
        self.query_encoder = ConvEncoder(dim, dim, kernel_size)
        self.key_encoder = ConvEncoder(dim, dim, kernel_size)

    def forward(self, image: torch.Tensor, output_size: tuple[int, int],
                grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.rope(self.image_encoder(self.normalize(image)))  # B, D, H, W
        queries = F.adaptive_avg_pool2d(self.query_encoder(encoded), output_size)  # B, D, Ho, Wo
        keys = F.adaptive_avg_pool2d(self.key_encoder(encoded), grid)  # B, D, h, w
        return queries, keys


class QueryKeyProjection(nn.Module):
    """RMSNorm, then the query and key rows of a multi-head attention's in-projection (weights and biases).

    ``in_proj_rows`` sets the Xavier bound as PyTorch's multi-head attention does: ``dim`` for separate projection
    matrices (JAFAR: its value width differs from ``dim``), ``3 * dim`` for the packed one (AnyUp).
    """

    def __init__(self, dim: int, in_proj_rows: int | None = None) -> None:
        super().__init__()
        self.query_norm, self.key_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.query_proj, self.key_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        bound = math.sqrt(6 / (dim + (in_proj_rows or dim)))
        for proj in (self.query_proj, self.key_proj):
            nn.init.uniform_(proj.weight, -bound, bound)
            nn.init.zeros_(proj.bias)

    @staticmethod
    def _per_pixel(x: torch.Tensor, norm: nn.RMSNorm, proj: nn.Linear) -> torch.Tensor:
        """Norm (in the weights' precision, also under autocast) and projection at every position of a map."""
        x = x.permute(0, 2, 3, 1)  # B, H, W, D
        return proj(norm(x.to(norm.weight.dtype))).permute(0, 3, 1, 2)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self._per_pixel(queries, self.query_norm, self.query_proj),
                self._per_pixel(keys, self.key_norm, self.key_proj))


@register_upsampler
class JAFAR(Upsampler):
    """JAFAR for one backbone width (the key path reads ``in_channels`` feature channels).

    Args:
        in_channels: backbone channels C (the key-feature encoder's input).
        patch_size: backbone patch size (unused by the architecture: any output size is produced directly).
        dim: query/key width D (128).
        heads: attention heads, whose weights are averaged (4).
        kernel_size: kernel of the three guidance encoders and the feature encoder (1, as the released config).
        chunk_size: output pixels per attention chunk (bounds peak memory; no effect on the result).

    Shape:
        features (B, C, h, w), image (B, 3, H, W) in [0, 1] -> (B, C, Ho, Wo) for any (Ho, Wo); default (H, W).

    562,304 parameters for C = 384 (the reference's 628,480 less the unused value/output projections and value
    norm; module docstring).
    """

    name = "jafar"
    scale = None

    def __init__(self, in_channels: int, patch_size: int, *, dim: int = 128, heads: int = 4, kernel_size: int = 1,
                 chunk_size: int = DEFAULT_CHUNK) -> None:
        super().__init__(in_channels, patch_size)
        check_widths(dim, heads)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 output pixels; got {chunk_size}")
        self.heads, self.chunk_size = heads, chunk_size
        self.guidance = GuidanceEncoder(dim, kernel_size)
        self.query_norm = nn.GroupNorm(GROUPS, dim, affine=False)
        self.query_conv = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.feature_encoder = ConvEncoder(in_channels, dim, kernel_size)
        self.key_norm = nn.GroupNorm(GROUPS, dim, affine=False)
        self.sft_scale = nn.Conv2d(dim, dim, 1, bias=False)
        self.sft_shift = nn.Conv2d(dim, dim, 1, bias=False)
        self.projection = QueryKeyProjection(dim)

    def keys(self, pooled: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """SFT: the pooled image keys, normalised, then scaled and shifted by the encoded features."""
        semantics = self.feature_encoder(F.normalize(features.to(pooled.dtype), dim=1))  # B, D, h, w
        return self.sft_scale(semantics) * self.key_norm(pooled) + self.sft_shift(semantics)

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        queries, pooled = self.guidance(image, size, features.shape[-2:])
        queries = self.query_conv(self.query_norm(queries))  # B, D, Ho, Wo
        q, k = self.projection(queries, self.keys(pooled, features))
        out = global_attention(q, k, features.to(q.dtype), self.heads, average_heads=True, chunk=self.chunk_size)
        return out.to(features.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, chunk_size={self.chunk_size}"
