"""Scenes with known classes: random shapes whose class is their stripe texture, never their colour.

A scene is a background region plus 6-12 shapes (ellipses, rotated rectangles, triangles) painted in
order with hard edges, so the class map is exact at pixel level. Every region gets

- a class in CLASSES, shown only as a luminance texture: flat, horizontal stripes, vertical stripes
  or plaid (both), with a random period, phase and contrast;
- a random base colour, drawn independently of the class, whose chromaticity (r, g) / (r + g + b)
  differs from every other region of the scene by at least ``CHROMA_GAP``.

The texture multiplies the base colour by (1 + contrast * pattern), which leaves the chromaticity of
every pixel exactly that of its region: colour says *where* a region is (sharp edges in the guidance
image), texture says *what* it is, and one pixel's colour says nothing about its class.
The class set is closed under flips, crops and zooms (stripe orientation survives all of them), so
the oracle backbone (``oracle.py``) gives consistent features to the augmented views objectives use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

CLASSES = ("flat", "horizontal", "vertical", "plaid")
CHROMA_GAP = 0.08  # minimum max-norm distance between two regions' (r, g) chromaticities
PERIOD = (7.0, 11.0)  # stripe period in pixels at the generated size
CONTRAST = (0.3, 0.45)
TRAIN_SEED_OFFSET, TEST_SEED_OFFSET = 0, 10_000_000


@dataclass
class Scene:
    image: torch.Tensor  # (3, H, W) in [0, 1]
    classes: torch.Tensor  # (H, W) int64 indices into CLASSES
    regions: torch.Tensor  # (H, W) int64, 0 = background, painting order otherwise


def _draw_chroma(gen: torch.Generator, taken: list[torch.Tensor]) -> torch.Tensor:
    """A chromaticity (r, g, b summing to 1, each >= 0.1) at least CHROMA_GAP from every one in ``taken``."""
    for _ in range(1000):
        raw = -torch.log(torch.rand(3, generator=gen).clamp_min(1e-6))  # Dirichlet(1, 1, 1) by normalised exponentials
        weights = 0.1 + 0.7 * raw / raw.sum()
        if all((weights[:2] - t[:2]).abs().max() >= CHROMA_GAP for t in taken):
            return weights
    raise RuntimeError("could not draw a distinct colour: too many regions for CHROMA_GAP")


def uniform(gen: torch.Generator, low: float, high: float) -> float:
    """One draw from U(low, high) off ``gen`` (every generator of the synthetic datasets uses this stream)."""
    return low + (high - low) * float(torch.rand((), generator=gen))


def _shape_mask(gen: torch.Generator, yy: torch.Tensor, xx: torch.Tensor, size: int) -> torch.Tensor:
    """A random ellipse, rotated rectangle or triangle as a boolean (H, W) mask."""
    u = lambda low, high: uniform(gen, low, high)  # noqa: E731
    cy, cx = u(0.1, 0.9) * yy.shape[0], u(0.1, 0.9) * xx.shape[1]
    ry, rx = u(0.05, 0.2) * size, u(0.05, 0.2) * size
    angle = u(0.0, math.pi)
    dy, dx = yy - cy, xx - cx
    v = dy * math.cos(angle) - dx * math.sin(angle)
    w = dy * math.sin(angle) + dx * math.cos(angle)
    kind = int(torch.randint(3, (), generator=gen))
    if kind == 0:
        return (v / ry) ** 2 + (w / rx) ** 2 <= 1
    if kind == 1:
        return (v.abs() <= ry) & (w.abs() <= rx)
    corners = [(cy + ry * math.sin(a), cx + rx * math.cos(a)) for a in (angle, angle + 2.2, angle + 4.1)]
    sides = [(x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
             for (y0, x0), (y1, x1) in zip(corners, corners[1:] + corners[:1], strict=True)]
    return torch.stack(sides).ge(0).all(0) | torch.stack(sides).le(0).all(0)  # inside: same side of every edge


def _texture(gen: torch.Generator, cls: int, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """Luminance multiplier (H, W) for class ``cls``: 1 + contrast * pattern, pattern in [-1, 1]."""
    period = PERIOD[0] + (PERIOD[1] - PERIOD[0]) * torch.rand(2, generator=gen)
    phase = 2 * math.pi * torch.rand(2, generator=gen)
    contrast = CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * float(torch.rand((), generator=gen))
    rows = torch.sin(2 * math.pi * yy / period[0] + phase[0])  # horizontal stripes vary along y
    cols = torch.sin(2 * math.pi * xx / period[1] + phase[1])
    pattern = {0: torch.zeros_like(yy), 1: rows, 2: cols, 3: (rows + cols) / 2}[cls]
    return 1 + contrast * pattern


def generate_scene(seed: int, size: int | tuple[int, int] = 128, num_objects: tuple[int, int] = (6, 12)) -> Scene:
    """The scene of ``seed`` at ``size`` pixels (an int for square scenes, or (H, W))."""
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < 16:
        raise ValueError(f"size must be at least 16 pixels per side; got {size}")
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    count = int(torch.randint(num_objects[0], num_objects[1] + 1, (), generator=gen))
    regions = torch.zeros(height, width, dtype=torch.int64)
    for index in range(1, count + 1):
        regions[_shape_mask(gen, yy, xx, min(height, width))] = index
    image = torch.zeros(3, height, width)
    classes = torch.zeros(height, width, dtype=torch.int64)
    chromas: list[torch.Tensor] = []
    for index in range(count + 1):
        mask = regions == index
        cls = int(torch.randint(len(CLASSES), (), generator=gen))
        chroma = _draw_chroma(gen, chromas)
        chromas.append(chroma)
        peak = 0.45 + 0.23 * float(torch.rand((), generator=gen))  # brightest channel, so 1 + contrast never clips
        colour = chroma * peak / chroma.max()
        image[:, mask] = colour[:, None] * _texture(gen, cls, yy, xx)[mask]
        classes[mask] = cls
    return Scene(image, classes, regions)


class SyntheticScenes(Dataset):
    """``num_scenes`` scenes of ``image_size`` pixels, for training (``wrc.training.train``'s item contract:
    ``{"image", "num_skipped"}``) or evaluation (``scene(i)``); the test split uses disjoint seeds.

    ``masks=True`` adds ``"masks"``: one boolean (H, W) mask per visible region (background first, then the shapes
    in painting order; disjoint, covering the image), in the role SA-1B's SAM masks play for LoftUp's mask term."""

    def __init__(self, num_scenes: int, image_size: int = 128, *, train: bool = True, masks: bool = False) -> None:
        if num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1; got {num_scenes}")
        self.num_scenes, self.image_size = num_scenes, image_size
        self.delivers_masks = masks  # items carry "masks": the training loop passes them to the objective
        self.offset = TRAIN_SEED_OFFSET if train else TEST_SEED_OFFSET

    def __len__(self) -> int:
        return self.num_scenes

    def scene(self, index: int) -> Scene:
        return generate_scene(self.offset + index, self.image_size)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index = item[0] if isinstance(item, tuple) else item
        scene = self.scene(index)
        if not self.delivers_masks:
            return {"image": scene.image, "num_skipped": 0}
        present = scene.regions.unique()  # sorted; a shape painted over entirely has no mask
        return {"image": scene.image, "num_skipped": 0, "masks": scene.regions[None] == present[:, None, None]}
