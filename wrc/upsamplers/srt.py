"""SRT: Stochastic Resonance Transformer (Lao et al., ICML 2024), a training-free test-time ensemble.

The image is translated by integer pixel offsets (dy, dx) in [-d, d]^2 (smaller than a patch, so each
view cuts the image into patches differently); every view goes through the backbone; its tokens are
nearest-upsampled to pixels, translated back and aggregated. The result is a pixel-level field
(sub-token detail recovered from the shifted patch grids), resized (area-pooled when the sizes
divide) to any requested grid.

Memory does not grow with the number of views for ``aggregate="mean"``: running sums (one per row
shift, on the token-rows x pixel-columns grid; each view's contribution is separable) and a coverage
count; the pixel-level field is formed once at the end. ``"median"`` keeps every view (memory x views).
Padding: shifted-in pixels come from ``padding_mode``; features shifted back from outside the image
are not counted (each pixel averages the views that saw it), except for ``"circular"``, which wraps.
Unlike the original (zero fill, then division by the number of views), borders are thus not biased
towards zero. The unshifted view reuses the features passed in, so ``max_shift=0`` is exactly
nearest upsampling.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from wrc.upsamplers.base import Upsampler, register_upsampler, resize

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
AGGREGATES = ("mean", "median")


def shift_image(image: torch.Tensor, dy: int, dx: int, padding_mode: str) -> torch.Tensor:
    """out[..., y, x] = image[..., y - dy, x - dx], the uncovered pixels filled by ``padding_mode``."""
    if padding_mode == "circular":
        return torch.roll(image, shifts=(dy, dx), dims=(-2, -1))
    d = max(abs(dy), abs(dx))
    if d == 0:
        return image
    mode = "constant" if padding_mode == "zeros" else padding_mode
    padded = F.pad(image, (d, d, d, d), mode=mode)
    height, width = image.shape[-2:]
    return padded[..., d - dy : d - dy + height, d - dx : d - dx + width]


def shift_back(field: torch.Tensor, dy: int, dx: int, circular: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, valid): out[..., y, x] = field[..., y + dy, x + dx] and a (H, W) mask of the in-range pixels."""
    if circular:
        return torch.roll(field, shifts=(-dy, -dx), dims=(-2, -1)), field.new_ones(field.shape[-2:])
    height, width = field.shape[-2:]
    out = torch.zeros_like(field)
    valid = field.new_zeros(height, width)
    ys, yd = slice(max(dy, 0), height + min(dy, 0)), slice(max(-dy, 0), height + min(-dy, 0))
    xs, xd = slice(max(dx, 0), width + min(dx, 0)), slice(max(-dx, 0), width + min(-dx, 0))
    out[..., yd, xd] = field[..., ys, xs]
    valid[yd, xd] = 1.0
    return out, valid


@register_upsampler
class SRT(Upsampler):
    """Args:
    max_shift: d, the largest translation in pixels (must be smaller than the patch size).
    num_views: use a random subset of this many shifts (always including the unshifted view);
        None = all (2d + 1)^2.
    seed: seed of that subset (the same shifts for every image).
    aggregate: "mean" (running sum, constant memory) or "median" (keeps all views).
    padding_mode: how shifted-in pixels are filled: zeros, reflect, replicate or circular.
    batch_size: views per backbone call (times the image batch).
    """

    name = "srt"
    needs_backbone = True
    trainable = False

    def __init__(self, in_channels: int, patch_size: int, *, max_shift: int = 3, num_views: int | None = None,
                 seed: int = 0, aggregate: str = "mean", padding_mode: str = "reflect", batch_size: int = 32) -> None:
        super().__init__(in_channels, patch_size)
        if not 0 <= max_shift < patch_size:
            raise ValueError(f"max_shift must be in [0, patch_size={patch_size}) (a shift of a whole patch only "
                             f"re-indexes the tokens); got {max_shift}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate={aggregate!r}; expected one of {AGGREGATES}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode={padding_mode!r}; expected one of {PADDING_MODES}")
        if num_views is not None and num_views < 1:
            raise ValueError(f"num_views must be >= 1 or None (all shifts); got {num_views}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.max_shift, self.num_views, self.seed = max_shift, num_views, seed
        self.aggregate, self.padding_mode, self.batch_size = aggregate, padding_mode, batch_size

    def shifts(self) -> list[tuple[int, int]]:
        """The translations used, (0, 0) first."""
        d = self.max_shift
        others = [s for s in itertools.product(range(-d, d + 1), repeat=2) if s != (0, 0)]
        if self.num_views is not None and self.num_views - 1 < len(others):
            order = torch.randperm(len(others), generator=torch.Generator().manual_seed(self.seed))
            others = [others[i] for i in sorted(order[: self.num_views - 1].tolist())]
        return [(0, 0), *others]

    def pixel_field(self, features: torch.Tensor, image: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
        """The aggregated (B, C, h P, w P) field over all views."""
        p = self.patch_size
        image = resize(image, (features.shape[-2] * p, features.shape[-1] * p))  # the pixels the token grid tiles
        views = self.views(features, image, backbone)
        if self.aggregate == "median":
            circular = self.padding_mode == "circular"
            fields = []
            for (dy, dx), tokens in views:
                field, valid = shift_back(F.interpolate(tokens, scale_factor=p, mode="nearest"), dy, dx, circular)
                fields.append(field.masked_fill(valid == 0, float("nan")))
            return torch.stack(fields).nanmedian(dim=0).values
        return self.mean_field(views, features)

    def views(self, features: torch.Tensor, image: torch.Tensor, backbone: nn.Module):
        """Yield ((dy, dx), tokens of the view shifted by (dy, dx)): first the unshifted view, which reuses
        ``features``, then the others, ``batch_size`` images per backbone call."""
        yield (0, 0), features
        shifts = self.shifts()[1:]
        chunk = max(1, self.batch_size // features.shape[0])
        for start in range(0, len(shifts), chunk):
            group = shifts[start : start + chunk]
            batch = torch.cat([shift_image(image, dy, dx, self.padding_mode) for dy, dx in group])
            yield from zip(group, backbone(batch).split(features.shape[0]), strict=True)

    def placement(self, tokens: int, shift: int, device: torch.device) -> torch.Tensor:
        """(tokens P, tokens) 0/1 matrix U: U[y, t] = 1 when pixel y shifted by ``shift`` lies in token t."""
        pixels = tokens * self.patch_size
        source = torch.arange(pixels, device=device) + shift
        if self.padding_mode == "circular":
            source = source % pixels
        valid = (source >= 0) & (source < pixels)
        owner = source.clamp(0, pixels - 1) // self.patch_size
        return torch.nn.functional.one_hot(owner, tokens).float() * valid[:, None]

    def mean_field(self, views, features: torch.Tensor) -> torch.Tensor:
        """Mean over views of nearest-upsampled, shifted-back tokens, without a pixel-level copy per view.

        A view's contribution is separable, U_y(dy) T U_x(dx)^T, so the running sums are kept per dy on the
        (h, W) grid and expanded along the rows once at the end: the cost per view is C h w W, not C H W.
        """
        h, w = features.shape[-2:]
        rows: dict[int, torch.Tensor] = {}  # dy -> running sum of T U_x(dx)^T, (B, C, h, W)
        count = features.new_zeros(h * self.patch_size, w * self.patch_size)
        for (dy, dx), tokens in views:
            u_x = self.placement(w, dx, features.device)
            contribution = torch.matmul(tokens, u_x.T)
            rows[dy] = rows[dy] + contribution if dy in rows else contribution
            count += self.placement(h, dy, features.device).sum(dim=1)[:, None] * u_x.sum(dim=1)[None, :]
        shifts = sorted(rows)
        u_y = torch.cat([self.placement(h, dy, features.device) for dy in shifts], dim=1)  # H, (used dy) h
        stacked = torch.cat([rows[dy] for dy in shifts], dim=-2)  # B, C, (used dy) h, W
        return torch.matmul(u_y, stacked).div_(count)

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        field = self.pixel_field(features, image, backbone)
        height, width = field.shape[-2:]
        if (height, width) == tuple(size):
            return field
        if size[0] <= height and size[1] <= width and height % size[0] == 0 and width % size[1] == 0:
            return F.avg_pool2d(field, (height // size[0], width // size[1]))  # exact area pooling
        return resize(field, size)
