"""Fixed-offset local softmax pooling: UPLiFT's Local Attender (and the normalised kernel sum of test-time fitted
bilateral upsamplers).

Each output pixel takes a convex combination of D values around its *parent* cell on the coarse grid, at fixed
offsets, with weights that are a softmax over D logits predicted at the output resolution; the coarse map is
replicate-padded so border pixels keep D neighbours. UPLiFT's 17 offsets: the 3 x 3 block, (0, +-2), (+-2, 0)
and (+-2, +-2) (modern_peers.md section 5.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UPLIFT_OFFSETS: tuple[tuple[int, int], ...] = (
    *((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),
    (0, -2), (0, 2), (-2, 0), (2, 0), (-2, -2), (-2, 2), (2, -2), (2, 2),
)


def local_softmax_pool(logits: torch.Tensor, values: torch.Tensor,
                       offsets: tuple[tuple[int, int], ...] = UPLIFT_OFFSETS) -> torch.Tensor:
    """logits (B, D, H, W) at the output grid, values (B, C, h, w) with H = s h, W = s w for an integer s ->
    (B, C, H, W): out(Y, X) = sum_d softmax(logits(Y, X))_d values(Y // s + dy_d, X // s + dx_d).

    Accumulates one offset at a time (memory of one output map, not D of them)."""
    if logits.dim() != 4 or values.dim() != 4 or logits.shape[0] != values.shape[0]:
        raise ValueError(f"logits (B, D, H, W) and values (B, C, h, w) expected; got {tuple(logits.shape)}, "
                         f"{tuple(values.shape)}")
    if logits.shape[1] != len(offsets):
        raise ValueError(f"logits have {logits.shape[1]} channels; one per offset ({len(offsets)}) expected")
    (height, width), (h, w) = logits.shape[-2:], values.shape[-2:]
    if height % h or width % w or height // h != width // w:
        raise ValueError(f"the output grid {height}x{width} must be the same integer multiple of {h}x{w} on both axes")
    scale, reach = height // h, max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    weights = logits.softmax(dim=1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(values.dtype)
    padded = F.pad(values, (reach, reach, reach, reach), mode="replicate")
    out = values.new_zeros(values.shape[0], values.shape[1], height, width)
    for d, (dy, dx) in enumerate(offsets):
        shifted = padded[..., reach + dy:reach + dy + h, reach + dx:reach + dx + w]
        out += weights[:, d:d + 1] * shifted.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return out
