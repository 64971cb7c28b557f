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
The unshifted view reuses the features passed in, so ``max_shift=0`` is exactly nearest upsampling.

Presets (``preset="default" | "paper"``; each flag can also be set on its own). The paper preset is the
original's aggregate; the default differs in three ways, each better at the border:
- ``duplicate_unshifted``: the original counts the unshifted view twice ((2d + 1)^2 + 1 = 50 views for d = 3),
  weighting it 2/50 against 1/50 for every shift; the default weighs all views alike (49 views).
- ``divide_by``: "coverage" (default) divides each pixel by the number of views whose shifted-back tokens
  cover it; "views" (the original) divides by the number of views, so a pixel near the border, which fewer
  views cover, is pulled towards zero (a corner at d = 3 keeps 17/50 = 0.34 of its value).
- ``padding_mode``: "reflect" (default) fills the shifted-in border with image content; "mean" (the original)
  fills it with the backbone's mean colour (zero after its normalisation), a flat band the backbone sees as
  an edge and encodes into the border tokens.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.guidance import IMAGENET_MEAN
from wrc.upsamplers.base import Upsampler, register_upsampler, resize

PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "mean")
AGGREGATES = ("mean", "median")
DIVIDE_BY = ("coverage", "views")
PRESETS: dict[str, dict[str, object]] = {  # the flags each preset sets (an explicit flag wins)
    "default": {"duplicate_unshifted": False, "divide_by": "coverage", "padding_mode": "reflect"},
    "paper": {"duplicate_unshifted": True, "divide_by": "views", "padding_mode": "mean"},
}


def shift_image(image: torch.Tensor, dy: int, dx: int, padding_mode: str,
                fill: torch.Tensor | None = None) -> torch.Tensor:
    """out[..., y, x] = image[..., y - dy, x - dx], the uncovered pixels filled by ``padding_mode``
    ("mean": with ``fill``, a per-channel colour broadcast as (1, C, 1, 1))."""
    if padding_mode == "circular":
        return torch.roll(image, shifts=(dy, dx), dims=(-2, -1))
    d = max(abs(dy), abs(dx))
    if d == 0:
        return image
    if padding_mode == "mean":
        if fill is None:
            raise ValueError("fill must be a (1, C, 1, 1) colour for padding_mode='mean'; got None")
        covered = shift_image(torch.ones_like(image[..., :1, :, :]), dy, dx, "zeros")
        return shift_image(image, dy, dx, "zeros") + fill * (1 - covered)  # copies inside, exactly ``fill`` outside
    mode = "constant" if padding_mode == "zeros" else padding_mode
    padded = F.pad(image, (d, d, d, d), mode=mode)
    height, width = image.shape[-2:]
    return padded[..., d - dy : d - dy + height, d - dx : d - dx + width]


def mean_colour(backbone: nn.Module | None, like: torch.Tensor) -> torch.Tensor:
    """The colour the backbone normalises to zero: its ``mean`` buffer (FrozenBackbone), else ImageNet's."""
    mean = getattr(backbone, "mean", None)
    if not isinstance(mean, torch.Tensor) or mean.numel() != 3:
        mean = torch.tensor(IMAGENET_MEAN)
    return mean.to(device=like.device, dtype=like.dtype).view(1, 3, 1, 1)


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
    batch_size: views per backbone call (times the image batch).
    preset: "default" or "paper" (the original's aggregate, see the module docstring): the values of the
        flags below that are left at None.
    padding_mode: how shifted-in pixels are filled: zeros, reflect, replicate, circular, or mean (the
        backbone's mean colour).
    duplicate_unshifted: count the unshifted view twice (as the original does).
    divide_by: "coverage" (the views covering each pixel) or "views" (all of them; out-of-image features count
        as zeros, also in the median).
    """

    name = "srt"
    needs_backbone = True
    trainable = False

    def __init__(self, in_channels: int, patch_size: int, *, max_shift: int = 3, num_views: int | None = None,
                 seed: int = 0, aggregate: str = "mean", padding_mode: str | None = None, batch_size: int = 32,
                 preset: str = "default", duplicate_unshifted: bool | None = None,
                 divide_by: str | None = None) -> None:
        super().__init__(in_channels, patch_size)
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r}; expected one of {tuple(PRESETS)}")
        flags = {"padding_mode": padding_mode, "duplicate_unshifted": duplicate_unshifted, "divide_by": divide_by}
        flags = PRESETS[preset] | {key: value for key, value in flags.items() if value is not None}
        padding_mode, divide_by = str(flags["padding_mode"]), str(flags["divide_by"])
        if not 0 <= max_shift < patch_size:
            raise ValueError(f"max_shift must be in [0, patch_size={patch_size}) (a shift of a whole patch only "
                             f"re-indexes the tokens); got {max_shift}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate={aggregate!r}; expected one of {AGGREGATES}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode={padding_mode!r}; expected one of {PADDING_MODES}")
        if divide_by not in DIVIDE_BY:
            raise ValueError(f"divide_by={divide_by!r}; expected one of {DIVIDE_BY}")
        if num_views is not None and num_views < 1:
            raise ValueError(f"num_views must be >= 1 or None (all shifts); got {num_views}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.max_shift, self.num_views, self.seed = max_shift, num_views, seed
        self.aggregate, self.padding_mode, self.batch_size = aggregate, padding_mode, batch_size
        self.preset, self.duplicate_unshifted, self.divide_by = preset, bool(flags["duplicate_unshifted"]), divide_by

    def shifts(self) -> list[tuple[int, int]]:
        """The translations used, (0, 0) first (twice with ``duplicate_unshifted``)."""
        d = self.max_shift
        others = [s for s in itertools.product(range(-d, d + 1), repeat=2) if s != (0, 0)]
        if self.num_views is not None and self.num_views - 1 < len(others):
            order = torch.randperm(len(others), generator=torch.Generator().manual_seed(self.seed))
            others = [others[i] for i in sorted(order[: self.num_views - 1].tolist())]
        return [(0, 0), (0, 0), *others] if self.duplicate_unshifted else [(0, 0), *others]

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
                fields.append(field if self.divide_by == "views" else field.masked_fill(valid == 0, float("nan")))
            return torch.stack(fields).nanmedian(dim=0).values
        return self.mean_field(views, features)

    def views(self, features: torch.Tensor, image: torch.Tensor, backbone: nn.Module):
        """Yield ((dy, dx), tokens of the view shifted by (dy, dx)): first the unshifted view(s), which reuse
        ``features``, then the others, ``batch_size`` images per backbone call."""
        shifts = self.shifts()
        unshifted = 2 if self.duplicate_unshifted else 1
        for _ in range(unshifted):
            yield (0, 0), features
        shifts = shifts[unshifted:]
        fill = mean_colour(backbone, image) if self.padding_mode == "mean" else None
        chunk = max(1, self.batch_size // features.shape[0])
        for start in range(0, len(shifts), chunk):
            group = shifts[start : start + chunk]
            batch = torch.cat([shift_image(image, dy, dx, self.padding_mode, fill) for dy, dx in group])
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
        if self.divide_by == "views":
            count = count.new_full((), len(self.shifts()))
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
