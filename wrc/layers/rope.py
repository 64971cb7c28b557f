"""Two-dimensional rotary position encodings on dense maps, as today's attention upsamplers use them.

Two different operators share the name, and the difference changes numbers (shared/reference/modern_peers.md
sections 1.1, 4.1 and 9.3), so each is its own module:

- ``LearnedPairRope`` (JAFAR, AnyUp): a trainable 2 x D frequency matrix, coordinates ``linspace(0, 1, n)``,
  channel i paired with channel i + D/2. Each output is ``x cos(theta) + rot(x) sin(theta)`` with one angle per
  channel, so the pair (i, i + D/2) is *not* rotated as a pair: the map is not norm-preserving in general.
  It acts on image features before the query/key encoders.
- ``AxialRope`` (NAF, after DINOv3): fixed periods, pixel-centre coordinates in [-1, 1], per head the angles
  [row angles, column angles] tiled twice, channel j rotated with channel j + D_head/2: a true rotation of
  each pair (norm-preserving), with an optional train-time rescale of the coordinates.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def rotate_half(x: torch.Tensor, dim: int) -> torch.Tensor:
    """[a, b] -> [-b, a] along ``dim`` (halves of equal size)."""
    a, b = x.chunk(2, dim=dim)
    return torch.cat([-b, a], dim=dim)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Angles and products in float32 at least (half-precision angles lose whole cycles), float64 for float64."""
    return torch.promote_types(x.dtype, torch.float32)


def linspace_grid(height: int, width: int, device: torch.device,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates ``linspace(0, 1, n)`` (the first pixel at 0, the last at 1), as (h, 1), (1, w)."""
    rows = torch.linspace(0, 1, height, device=device, dtype=dtype).view(height, 1)
    cols = torch.linspace(0, 1, width, device=device, dtype=dtype).view(1, width)
    return rows, cols


class LearnedPairRope(nn.Module):
    """JAFAR's / AnyUp's encoding of a (B, D, H, W) map: theta = r Phi[0] + c Phi[1], one angle per channel.

    Initialised with D/4 frequencies g_k = 100^(-k / (D/4 - 1)): channels [0, D/2) turn with the row angle
    2 pi [g, g], channels [D/2, D) with the column angle 2 pi [g, g]; the highest frequency is one cycle per
    image side. Phi is a trained parameter (weight decay applies to it, as in the original).
    """

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        if dim % 4 or dim < 8:
            raise ValueError(f"dim must be a multiple of 4 and >= 8; got {dim}")
        quarter = dim // 4
        g = 100.0 ** (-torch.arange(quarter, dtype=torch.float64) / (quarter - 1))
        phi = torch.zeros(2, dim, dtype=torch.float64)
        phi[0, : dim // 2] = 2 * math.pi * torch.cat([g, g])
        phi[1, dim // 2:] = 2 * math.pi * torch.cat([g, g])
        self.frequencies = nn.Parameter(phi.float())

    def angles(self, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(D, H, W) angles of every channel at every pixel."""
        rows, cols = linspace_grid(height, width, self.frequencies.device, dtype)
        phi = self.frequencies.to(dtype)
        return rows[None] * phi[0].view(-1, 1, 1) + cols[None] * phi[1].view(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.frequencies.shape[1]:
            raise ValueError(f"x must be (B, {self.frequencies.shape[1]}, H, W); got {tuple(x.shape)}")
        dtype = compute_dtype(x)
        theta = self.angles(*x.shape[-2:], dtype=dtype)
        out = x.to(dtype) * theta.cos() + rotate_half(x.to(dtype), dim=1) * theta.sin()
        return out.to(x.dtype)


class AxialRope(nn.Module):
    """NAF's (DINOv3's) encoding of a (B, heads * D_head, H, W) map, applied per head.

    Periods P_i = base^(2 i / (D_head / 2)) for i < D_head / 4; pixel-centre coordinates (i + 0.5) / n mapped to
    [-1, 1] on each axis; angle 2 pi coord / P_i; per head the angles [rows (D_head/4), columns (D_head/4)] are
    tiled twice and channel j rotates with channel j + D_head/2. In training, the coordinates are multiplied by
    one factor exp(U(-ln r, ln r)) per forward pass (``rescale`` = r; 1 disables it). No parameters.
    """

    def __init__(self, dim: int, heads: int, base: float = 100.0, rescale: float = 2.0) -> None:
        super().__init__()
        if dim % heads or (dim // heads) % 4:
            raise ValueError(f"dim={dim} must split into {heads} heads of a multiple of 4 channels")
        if base <= 0 or rescale < 1:
            raise ValueError(f"need base > 0 and rescale >= 1; got base={base}, rescale={rescale}")
        self.dim, self.heads, self.rescale = dim, heads, rescale
        head_dim = dim // heads
        exponents = 2 * torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 2)
        self.register_buffer("periods", base ** exponents, persistent=False)  # float64: cast per call

    def angles(self, height: int, width: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(D_head, H, W) angles, shared by every head."""
        device = self.periods.device
        rows = ((torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 - 1) * scale
        cols = ((torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 - 1) * scale
        per_period = 2 * math.pi / self.periods.to(dtype).view(-1, 1, 1)  # D_head/4, 1, 1
        row_angles = (rows.view(1, -1, 1) * per_period).expand(-1, height, width)
        col_angles = (cols.view(1, 1, -1) * per_period).expand(-1, height, width)
        return torch.cat([row_angles, col_angles, row_angles, col_angles], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}, H, W); got {tuple(x.shape)}")
        scale = 1.0
        if self.training and self.rescale > 1:
            log_r = math.log(self.rescale)
            scale = float(torch.empty(()).uniform_(-log_r, log_r).exp())
        dtype = compute_dtype(x)
        theta = self.angles(*x.shape[-2:], scale=scale, dtype=dtype)  # D_head, H, W
        b, _, h, w = x.shape
        heads = x.to(dtype).view(b, self.heads, self.dim // self.heads, h, w)
        out = heads * theta.cos() + rotate_half(heads, dim=2) * theta.sin()
        return out.view(b, self.dim, h, w).to(x.dtype)
