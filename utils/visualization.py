"""Figures of dense features: PCA colouring, similarity maps, side-by-side panels (LiFT Fig. 5 style).

PCA is fitted on the low-resolution features only and applied unchanged to every upsampled map, so
colours mean the same thing in every panel and differences are the upsamplers', not the projection's.
Rendering uses Pillow alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

# A perceptually ordered dark-blue -> green -> yellow ramp (viridis anchors) for similarity maps.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


class FeaturePCA:
    """Three principal components of a (C, h, w) map, with a robust [0, 1] colour range from the same map."""

    def __init__(self, features: torch.Tensor, num_components: int = 3) -> None:
        flat = features.detach().float().flatten(1).T  # hw, C
        self.mean = flat.mean(dim=0, keepdim=True)
        _, _, v = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.components = v[:num_components].T  # C, 3
        projected = (flat - self.mean) @ self.components
        self.low = torch.quantile(projected, 0.01, dim=0)
        self.high = torch.quantile(projected, 0.99, dim=0)

    def colorize(self, features: torch.Tensor) -> torch.Tensor:
        """(C, H, W) -> RGB (3, H, W) in [0, 1]."""
        c, h, w = features.shape
        projected = (features.detach().float().flatten(1).T - self.mean) @ self.components
        rgb = (projected - self.low) / (self.high - self.low).clamp_min(1e-6)
        return rgb.clamp(0, 1).T.reshape(3, h, w)


def similarity_map(features: torch.Tensor, query: tuple[float, float]) -> torch.Tensor:
    """Cosine similarity (H, W) between every position and the feature at ``query`` = (y, x) in [0, 1)."""
    _, h, w = features.shape
    y, x = min(int(query[0] * h), h - 1), min(int(query[1] * w), w - 1)
    reference = features[:, y, x, None, None]
    return F.cosine_similarity(features, reference.expand_as(features), dim=0)


def apply_ramp(values: torch.Tensor, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """(H, W) scalars -> RGB (3, H, W) in [0, 1] on the viridis-like ramp."""
    t = ((values.detach().float().cpu().numpy() - low) / (high - low)).clip(0, 1) * (len(_RAMP) - 1)
    index = np.minimum(t.astype(int), len(_RAMP) - 2)
    frac = (t - index)[..., None]
    rgb = _RAMP[index] * (1 - frac) + _RAMP[index + 1] * frac
    return torch.from_numpy(rgb / 255.0).permute(2, 0, 1)


def to_pil(rgb: torch.Tensor, size: int) -> Image.Image:
    """RGB (3, H, W) in [0, 1] -> square PIL panel, nearest-neighbour so feature cells stay visible."""
    array = (rgb.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return Image.fromarray(array).resize((size, size), Image.NEAREST)


def comparison_figure(
    image: torch.Tensor, maps: dict[str, torch.Tensor], query: tuple[float, float] = (0.5, 0.5), panel: int = 224
) -> Image.Image:
    """One image's row of PCA panels and a row of similarity maps.

    Args:
        image: (3, H, W) in [0, 1].
        maps: title -> (C, h, w) features; the first entry (the low-res features) fits the PCA.
        query: (y, x) of the similarity query in [0, 1), marked with a red dot.
    """
    titles = ["image", *maps]
    pca = FeaturePCA(next(iter(maps.values())))
    top = [to_pil(image, panel)] + [to_pil(pca.colorize(m), panel) for m in maps.values()]
    bottom = [to_pil(image, panel)] + [to_pil(apply_ramp(similarity_map(m, query)), panel) for m in maps.values()]
    header, gap = 18, 4
    canvas = Image.new("RGB", (len(titles) * (panel + gap), 2 * (panel + header) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(titles):
        x = col * (panel + gap)
        draw.text((x + 4, 3), title, fill="black")
        draw.text((x + 4, panel + header + gap + 3), "query" if col == 0 else f"{title}: similarity", fill="black")
        canvas.paste(top[col], (x, header))
        canvas.paste(bottom[col], (x, 2 * header + panel + gap))
    qy, qx = query[0] * panel, query[1] * panel
    for y0 in (header, 2 * header + panel + gap):
        draw.ellipse([qx - 4, y0 + qy - 4, qx + 4, y0 + qy + 4], fill="red", outline="white")
    return canvas


def save_figure(rows: list[Image.Image], path: str | Path) -> Path:
    """Stack per-image figures vertically into one PNG."""
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height
    path = Path(path)
    canvas.save(path)
    return path
