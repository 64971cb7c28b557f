"""Synthetic videos with known instance masks, written in the DAVIS-2017 layout (the davis protocol's ground truth).

A video is 6-8 frames of a textured background and 2-3 shapes (ellipses, rotated rectangles, triangles) that
translate, scale and rotate from frame to frame, painted in order with hard edges, so each frame's instance
mask (0 = background, k = the k-th shape) is exact. Regions follow scenes.py: a class shown only as a stripe
texture (flat, horizontal, vertical, plaid; the texture moves with its shape but never rotates, so the class
holds in every frame) on a base colour whose chromaticity differs from every other region of the video by at
least ``CHROMA_GAP``, which is what the oracle backbone reads regions by.

``write_davis_layout`` writes ``JPEGImages/<resolution>/<sequence>/%05d.jpg`` (quality 100, no chroma subsampling:
JPEG must not move a region's colour out of its chromaticity bin), ``Annotations/<resolution>/<sequence>/%05d.png``
(palette PNGs for every frame) and ``ImageSets/2017/<split>.txt``; a ``complete.json`` written last says a folder is
complete, so a rerun with the same arguments skips the generation. A regeneration removes that marker before it
deletes anything, so one killed part-way is redone by the next call whatever its arguments.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluation.synthetic.scenes import CLASSES, _draw_chroma, _texture, uniform
from evaluation.video.davis import write_label
from wrc.checkpoint import atomic_write_text

SIZE = 128  # frame side: 16 x 16 tokens for the oracle's 8-pixel patches, a 32 x 32 grid at 2x
FRAMES = (6, 8)
OBJECTS = (2, 3)
MIN_VISIBLE = 0.02  # every shape covers at least this share of every frame
SHAPES = ("ellipse", "rectangle", "triangle")
SEED_STRIDE = 1_000_003  # video i of seed s uses generator seed s * SEED_STRIDE + i
MARKER = "complete.json"


@dataclass
class Motion:
    """A shape's pose at frame 0 and its change per frame (pixels, radians, relative scale)."""

    kind: str
    centre: tuple[float, float]
    radii: tuple[float, float]
    angle: float
    velocity: tuple[float, float]
    growth: float
    spin: float

    def mask(self, frame: int, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        """The shape at ``frame`` as a boolean (H, W) mask."""
        cy, cx = (c + v * frame for c, v in zip(self.centre, self.velocity, strict=True))
        scale = (1 + self.growth) ** frame
        ry, rx = self.radii[0] * scale, self.radii[1] * scale
        angle = self.angle + self.spin * frame
        dy, dx = yy - cy, xx - cx
        v = dy * math.cos(angle) - dx * math.sin(angle)
        w = dy * math.sin(angle) + dx * math.cos(angle)
        if self.kind == "ellipse":
            return (v / ry) ** 2 + (w / rx) ** 2 <= 1
        if self.kind == "rectangle":
            return (v.abs() <= ry) & (w.abs() <= rx)
        corners = [(cy + ry * math.sin(a), cx + rx * math.cos(a)) for a in (angle, angle + 2.2, angle + 4.1)]
        sides = [(x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0)
                 for (y0, x0), (y1, x1) in zip(corners, corners[1:] + corners[:1], strict=True)]
        inside_left = (sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)
        return inside_left | ((sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0))  # same side of every edge

    def offset(self, frame: int) -> tuple[float, float]:
        return self.velocity[0] * frame, self.velocity[1] * frame


@dataclass
class SyntheticVideo:
    frames: torch.Tensor  # (T, 3, H, W) in [0, 1]
    masks: torch.Tensor  # (T, H, W) int64 instance ids, 0 = background
    classes: torch.Tensor  # (T, H, W) int64 indices into CLASSES


def _motion(gen: torch.Generator, size: int, frames: int) -> Motion:
    travel = 0.18 * size / (frames - 1)  # at most ~18% of the frame over the video, per axis
    return Motion(
        kind=SHAPES[int(torch.randint(len(SHAPES), (), generator=gen))],
        centre=(uniform(gen, 0.3, 0.7) * size, uniform(gen, 0.3, 0.7) * size),
        radii=(uniform(gen, 0.12, 0.22) * size, uniform(gen, 0.12, 0.22) * size),
        angle=uniform(gen, 0.0, math.pi),
        velocity=(uniform(gen, -travel, travel), uniform(gen, -travel, travel)),
        growth=uniform(gen, -0.05, 0.05),
        spin=uniform(gen, -0.1, 0.1),
    )


def _instances(motions: list[Motion], frames: int, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    masks = torch.zeros(frames, *yy.shape, dtype=torch.int64)
    for t in range(frames):
        for index, motion in enumerate(motions, start=1):
            masks[t][motion.mask(t, yy, xx)] = index
    return masks


def generate_video(seed: int, size: int = SIZE) -> SyntheticVideo:
    """The video of ``seed``: frames, instance masks and class maps (redrawn until every shape stays visible)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    frames = int(torch.randint(FRAMES[0], FRAMES[1] + 1, (), generator=gen))
    count = int(torch.randint(OBJECTS[0], OBJECTS[1] + 1, (), generator=gen))
    for _ in range(100):
        motions = [_motion(gen, size, frames) for _ in range(count)]
        masks = _instances(motions, frames, yy, xx)
        visible = torch.stack([(masks == k).flatten(1).float().mean(1) for k in range(1, count + 1)])
        if bool((visible >= MIN_VISIBLE).all()):
            break
    else:
        raise RuntimeError(f"video seed {seed}: could not keep {count} shapes visible in every frame")
    chromas: list[torch.Tensor] = []
    looks = []  # per region: class, colour, texture seed
    for _ in range(count + 1):
        chroma = _draw_chroma(gen, chromas)
        chromas.append(chroma)
        peak = 0.45 + 0.23 * float(torch.rand((), generator=gen))  # brightest channel: 1 + contrast never clips
        looks.append((int(torch.randint(len(CLASSES), (), generator=gen)), chroma * peak / chroma.max(),
                      int(torch.randint(2**31 - 1, (), generator=gen))))
    images = torch.zeros(frames, 3, size, size)
    classes = torch.zeros(frames, size, size, dtype=torch.int64)
    for t in range(frames):
        for region, (cls, colour, texture_seed) in enumerate(looks):
            dy, dx = motions[region - 1].offset(t) if region else (0.0, 0.0)
            texture = _texture(torch.Generator().manual_seed(texture_seed), cls, yy - dy, xx - dx)
            inside = masks[t] == region
            images[t][:, inside] = colour[:, None] * texture[inside]
            classes[t][inside] = cls
    return SyntheticVideo(images, masks, classes)


def sequence_names(count: int) -> list[str]:
    return [f"synthetic-{index:03d}" for index in range(count)]


def write_davis_layout(root: Path, count: int, seed: int = 0, split: str = "val", resolution: str = "480p",
                       size: int = SIZE) -> list[str]:
    """Write ``count`` videos into ``root`` in the DAVIS layout (skipped when ``root`` already holds exactly them);
    returns the sequence names."""
    root = Path(root)
    spec = {"count": count, "seed": seed, "split": split, "resolution": resolution, "size": size}
    marker = root / MARKER
    names = sequence_names(count)
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return names
    marker.unlink(missing_ok=True)  # first: a regeneration killed part-way must not leave an old marker that matches
    for folder in ("JPEGImages", "Annotations", "ImageSets"):
        shutil.rmtree(root / folder, ignore_errors=True)
    for index, name in enumerate(names):
        video = generate_video(seed * SEED_STRIDE + index, size)
        for t in range(video.frames.shape[0]):
            pixels = (video.frames[t].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            path = root / "JPEGImages" / resolution / name / f"{t:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=100, subsampling=0)
            labels = video.masks[t].numpy().astype(np.uint8)
            write_label(root / "Annotations" / resolution / name / f"{t:05d}.png", labels)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(names) + "\n")
    atomic_write_text(marker, json.dumps(spec))
    return names
