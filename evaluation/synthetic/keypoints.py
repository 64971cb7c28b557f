"""Synthetic keypoint pairs with known correspondences, written in the SPair-71k layout (the spair protocol's
``dataset=synthetic``), scored on the oracle backbone through the same loader and matching code.

A scene holds ``SLOTS`` markers on a textured background. A marker is a small square (7 pixels, under one
8-pixel oracle patch) of its own colour and texture class; a keypoint is a marker's centre. Colours are
drawn so that the oracle's field direction in every region (each marker, the background, the occluder)
is < ``MAX_COSINE`` from every other's and from the black padding's: one keypoint is never a plausible
match for another. The oracle's field is constant inside a region, so a keypoint is defined by the field
*around* it: a marker's centre is the one point whose neighbourhood is the marker all round. Sharp, correct
upsampled features find it within a pixel or two; blurred token features (a marker is a fraction of one
patch, mixed with its neighbours) place it several pixels off. Corners of a uniform shape would not do:
all four corners of a square mix the same two regions in the same proportions.

Each pair is a source scene and the target it becomes under a known warp, by category:
- ``shift``: a translation;
- ``affine``: rotation (up to 25 degrees), isotropic scale (0.8-1.25) and translation;
- ``occluded``: affine, then an occluder (its own colour and texture) painted on top over a marker (and
  any other it reaches); their keypoints are invisible in the target (null in its ImageAnnotation,
  absent from the pair file, as SPair lists only keypoints visible in both images).
Images are rendered at each pose (every pixel evaluated at its source position), never resampled, so
every region keeps one exact chromaticity. Their long side is ``image_size`` (the protocol's pad-resize
then only pads); orientation (landscape or portrait) is random per image.

Files: ``JPEGImages/<category>/<name>.jpg`` (quality 100, no chroma subsampling, so the oracle reads the
re-read files as the generator drew them), ``ImageAnnotation/<category>/<name>.json``,
``PairAnnotation/<split>/<id>-<src>-<trg>:<category>.json`` (the official ':' names), and
``synthetic.json`` last: a complete dataset with the same parameters is reused, never rewritten. Replacing
one removes ``synthetic.json`` before anything else, so an interrupted replacement is never taken for complete.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.synthetic.oracle import CHROMA_BIN, OracleBackbone
from evaluation.synthetic.scenes import CLASSES, _draw_chroma, _texture, uniform
from wrc.checkpoint import atomic_write_text

CATEGORIES = ("affine", "occluded", "shift")
SLOTS = 8  # markers (keypoint slots) per scene
HALF = 3.0  # half side of a marker square in pixels (centre +- HALF: 7 pixels wide, under one 8-pixel patch)
ASPECT = 0.75  # short side / long side of every image
OBJECT = 0.45  # side of the square holding the markers, as a share of the short side
MAX_COSINE = 0.85  # between the field directions of any two regions of a scene (and the black padding)
MIN_CHROMA = 0.16  # no channel darker than this share (JPEG's errors shift the chromaticity of dark channels most)
DRAWS = 500  # colour draws per region before giving up
ORACLE = OracleBackbone()  # the protocol's default oracle, whose field directions the colours are chosen against
GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"
WRITTEN = ("JPEGImages", "ImageAnnotation", "PairAnnotation", MANIFEST)


@dataclass
class Rendered:
    image: torch.Tensor  # (3, H, W) in [0, 1]
    classes: torch.Tensor  # (H, W) int64 indices into CLASSES
    points: torch.Tensor  # (SLOTS, 2) x, y of every marker centre (pixel-index coordinates)
    visible: torch.Tensor  # (SLOTS,) bool
    box: list[float]  # x1, y1, x2, y2 of the markers


@dataclass
class SyntheticPair:
    source: Rendered
    target: Rendered


def _frame(gen: torch.Generator, image_size: int) -> tuple[int, int]:
    """(height, width): long side ``image_size``, landscape or portrait at random."""
    short = round(image_size * ASPECT)
    return (short, image_size) if bool(torch.rand((), generator=gen) < 0.5) else (image_size, short)


def _marker_centres(gen: torch.Generator, height: int, width: int) -> torch.Tensor:
    """SLOTS integer centres (x, y): a jittered 3 x 3 grid minus one cell, in a square around the image centre."""
    side = OBJECT * min(height, width)
    cell = side / 3
    jitter = max(0.0, (cell - 2 * HALF) / 2 - 3)
    skipped = int(torch.randint(9, (), generator=gen))
    centres = []
    for index, (row, col) in enumerate(itertools.product(range(3), range(3))):
        if index == skipped:
            continue
        x = width / 2 - side / 2 + (col + 0.5) * cell + uniform(gen, -jitter, jitter)
        y = height / 2 - side / 2 + (row + 0.5) * cell + uniform(gen, -jitter, jitter)
        centres.append((round(x), round(y)))
    return torch.tensor(centres, dtype=torch.float64)


def _colour(gen: torch.Generator, chroma: torch.Tensor) -> torch.Tensor:
    peak = 0.6 + 0.08 * float(torch.rand((), generator=gen))  # bright (JPEG errs most in dark pixels), never clips
    return chroma * peak / chroma.max()


@dataclass
class Region:
    cls: int  # index into CLASSES: the texture
    colour: torch.Tensor  # (3,) base colour


@dataclass
class Scene:
    """What the source and target of a pair share: the marker layout, the regions' classes and colours."""

    centres: torch.Tensor  # (SLOTS, 2) in the source frame
    markers: list[Region]  # one per slot
    background: Region
    occluder: Region


def field_direction(cls: int, chroma: torch.Tensor) -> torch.Tensor:
    """The unit direction of the oracle's field inside a region of class ``cls`` and chromaticity ``chroma`` (r, g,
    b summing to 1): E[:, cls] + G (chroma[:2] - 1/3), as evaluation/synthetic/oracle.py defines it."""
    field = ORACLE.class_embedding[:, cls] + ORACLE.colour_map @ (chroma[:2].float() - 1 / 3)
    return F.normalize(field, dim=0)


def _bin_centre(chroma: torch.Tensor) -> torch.Tensor:
    """``chroma`` moved to the centre of its oracle chromaticity bin, so that JPEG's small colour errors (up to half
    a bin) never carry a pixel into another region."""
    rg = (torch.floor(chroma[:2] / CHROMA_BIN) + 0.5) * CHROMA_BIN
    return torch.cat([rg, 1 - rg.sum(0, keepdim=True)])


def _regions(gen: torch.Generator, classes: list[int]) -> list[Region]:
    """One region per class in ``classes`` whose field direction is < MAX_COSINE from every other's and from the
    black padding's (a huge flat region in every padded image): no region stands in for another in matching."""
    chromas: list[torch.Tensor] = []
    directions = [field_direction(0, torch.zeros(3))]  # black: chromaticity (0, 0), flat
    for cls in classes:
        for _ in range(DRAWS):
            chroma = _bin_centre(_draw_chroma(gen, chromas))
            direction = field_direction(cls, chroma)
            if chroma.min() >= MIN_CHROMA and max(float(direction @ d) for d in directions) < MAX_COSINE:
                break
        else:
            raise RuntimeError(f"no region colour within MAX_COSINE={MAX_COSINE} of the others after {DRAWS} draws")
        chromas.append(chroma)
        directions.append(direction)
    return [Region(cls, _colour(gen, chroma)) for cls, chroma in zip(classes, chromas, strict=True)]


def _scene(gen: torch.Generator, source_frame: tuple[int, int]) -> Scene:
    textured = lambda: int(torch.randint(1, len(CLASSES), (), generator=gen))  # noqa: E731
    marker_classes = [int(c) for c in torch.randperm(len(CLASSES), generator=gen).repeat(SLOTS)[:SLOTS]]
    regions = _regions(gen, [textured(), textured(), *marker_classes])
    return Scene(centres=_marker_centres(gen, *source_frame), markers=regions[2:], background=regions[0],
                 occluder=regions[1])


def _paint(gen: torch.Generator, region: Region, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """(3, H, W) of ``region``'s colour with its class's texture, in the image's own pixel grid (so a warp never
    turns horizontal stripes into plaid)."""
    return region.colour.double()[:, None, None] * _texture(gen, region.cls, yy.float(), xx.float())[None].double()


def _render(gen: torch.Generator, scene: Scene, frame: tuple[int, int], matrix: torch.Tensor,
            offset: torch.Tensor) -> Rendered:
    """The scene at the pose target = matrix @ source + offset, in a frame of (height, width)."""
    height, width = frame
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    inverse = torch.linalg.inv(matrix)
    pixels = torch.stack([xx - offset[0], yy - offset[1]], dim=-1)  # H, W, 2
    source = pixels @ inverse.T  # each pixel at its source position
    image = _paint(gen, scene.background, yy, xx)
    classes = torch.full((height, width), scene.background.cls, dtype=torch.int64)
    points = scene.centres @ matrix.T + offset
    reach = HALF * math.sqrt(2) * float(torch.linalg.matrix_norm(matrix, ord=2)) + 2
    for centre, point, marker in zip(scene.centres, points, scene.markers, strict=True):
        (x0, y0), (x1, y1) = (point - reach).floor().long().clamp_min(0), (point + reach).ceil().long() + 1
        window = (slice(y0, y1), slice(x0, x1))  # painting only near the marker: its texture is a full-size map
        inside = ((source[window] - centre).abs() <= HALF).all(dim=-1)
        image[(slice(None), *window)] = torch.where(inside[None], _paint(gen, marker, yy[window], xx[window]),
                                                    image[(slice(None), *window)])
        classes[window][inside] = marker.cls
    corners = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float64) * HALF
    extent = ((scene.centres[:, None] + corners[None]) @ matrix.T + offset).reshape(-1, 2)
    low, high = extent.min(0).values, extent.max(0).values
    box = [max(0.0, float(low[0])), max(0.0, float(low[1])), min(width - 1.0, float(high[0])),
           min(height - 1.0, float(high[1]))]
    return Rendered(image.float().clamp(0, 1), classes, points, torch.ones(SLOTS, dtype=torch.bool), box)


def _occlude(gen: torch.Generator, scene: Scene, rendered: Rendered, scale: float) -> None:
    """Paint an occluder over a marker; every marker it touches becomes invisible."""
    height, width = rendered.classes.shape
    reach = HALF * scale * math.sqrt(2) + 1  # a marker's radius in the target, plus a pixel
    first = int(torch.randint(SLOTS, (), generator=gen))
    centre = rendered.points[first]
    half = torch.tensor([uniform(gen, reach + 2, 2.2 * reach), uniform(gen, reach + 2, 2.2 * reach)])
    low, high = (centre - half).floor(), (centre + half).ceil()
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    inside = (xx >= low[0]) & (xx <= high[0]) & (yy >= low[1]) & (yy <= high[1])
    rendered.image = torch.where(inside[None], _paint(gen, scene.occluder, yy, xx), rendered.image).float().clamp(0, 1)
    rendered.classes[inside] = scene.occluder.cls
    near_x = (rendered.points[:, 0] + reach >= low[0]) & (rendered.points[:, 0] - reach <= high[0])
    near_y = (rendered.points[:, 1] + reach >= low[1]) & (rendered.points[:, 1] - reach <= high[1])
    rendered.visible &= ~(near_x & near_y)


def make_pair(category: str, seed: int, image_size: int = 224) -> SyntheticPair:
    """The pair of ``seed`` in ``category`` (one of CATEGORIES), images with long side ``image_size``."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown synthetic keypoint category {category!r}; expected one of {CATEGORIES}")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 pixels for the synthetic keypoint scenes; got {image_size}")
    gen = torch.Generator().manual_seed(seed)
    source_frame, target_frame = _frame(gen, image_size), _frame(gen, image_size)
    scene = _scene(gen, source_frame)
    if category == "shift":
        angle, scale = 0.0, 1.0
    else:
        angle, scale = math.radians(uniform(gen, -25, 25)), math.exp(uniform(gen, math.log(0.8), math.log(1.25)))
    matrix = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                                  dtype=torch.float64)
    shift = 0.08 * min(target_frame) * (2 * torch.rand(2, generator=gen, dtype=torch.float64) - 1)
    source_centre = torch.tensor([source_frame[1] / 2, source_frame[0] / 2], dtype=torch.float64)
    target_centre = torch.tensor([target_frame[1] / 2, target_frame[0] / 2], dtype=torch.float64) + shift
    source = _render(gen, scene, source_frame, torch.eye(2, dtype=torch.float64),
                     torch.zeros(2, dtype=torch.float64))
    target = _render(gen, scene, target_frame, matrix, target_centre - source_centre @ matrix.T)
    if category == "occluded":
        _occlude(gen, scene, target, scale)
    return SyntheticPair(source, target)


def save_jpeg(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) in [0, 1] as a JPEG that keeps colours (quality 100, 4:4:4)."""
    pixels = (image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=100, subsampling=0)


def _annotation(name: str, rendered: Rendered, category: str) -> dict:
    height, width = rendered.classes.shape
    kps = {str(k): ([float(x), float(y)] if v else None)
           for k, ((x, y), v) in enumerate(zip(rendered.points.tolist(), rendered.visible.tolist(), strict=True))}
    return {"filename": f"{name}.jpg", "category": category, "image_width": width, "image_height": height,
            "bndbox": rendered.box, "kps": kps}


def write_synthetic_spair(root: str | Path, pairs_per_category: int, image_size: int = 224, seed: int = 0,
                          split: str = "test") -> Path:
    """Write (or reuse, when complete with these parameters) the synthetic dataset under ``root``; returns root."""
    root = Path(root)
    params = {"generator": GENERATOR_VERSION, "pairs_per_category": pairs_per_category, "image_size": image_size,
              "seed": seed, "split": split, "categories": list(CATEGORIES)}
    manifest = root / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == params:
        return root
    if root.exists():  # incomplete, or other parameters: replaced, but only where it holds nothing else
        foreign = sorted(p.name for p in root.iterdir() if p.name not in WRITTEN)
        if foreign:
            raise ValueError(f"{root} holds files the synthetic keypoint generator did not write ({foreign[:3]}): "
                             "give it an empty folder or one it wrote")
        manifest.unlink(missing_ok=True)  # first: a regeneration killed from here on leaves no "complete" marker
        for name in WRITTEN:
            if (root / name).is_dir():
                shutil.rmtree(root / name)
    for c, category in enumerate(CATEGORIES):
        for index in range(pairs_per_category):
            pair = make_pair(category, seed * 1_000_003 + c * 100_003 + index, image_size)
            names = (f"s{index:04d}", f"t{index:04d}")
            for name, rendered in zip(names, (pair.source, pair.target), strict=True):
                save_jpeg(rendered.image, root / "JPEGImages" / category / f"{name}.jpg")
                folder = root / "ImageAnnotation" / category
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{name}.json").write_text(json.dumps(_annotation(name, rendered, category)))
            common = (pair.source.visible & pair.target.visible).nonzero().flatten().tolist()
            record = {
                "pair_id": index + 1, "src_imname": f"{names[0]}.jpg", "trg_imname": f"{names[1]}.jpg",
                "src_imsize": [pair.source.image.shape[2], pair.source.image.shape[1], 3],
                "trg_imsize": [pair.target.image.shape[2], pair.target.image.shape[1], 3],
                "src_bndbox": pair.source.box, "trg_bndbox": pair.target.box, "category": category,
                "src_kps": [pair.source.points[k].tolist() for k in common],
                "trg_kps": [pair.target.points[k].tolist() for k in common],
                "kps_ids": [str(k) for k in common], "mirror": 0, "viewpoint_variation": 0, "scale_variation": 0,
                "truncation": 0, "occlusion": int(len(common) < SLOTS),
            }
            folder = root / "PairAnnotation" / split
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index + 1:06d}-{names[0]}-{names[1]}:{category}.json").write_text(json.dumps(record))
    atomic_write_text(manifest, json.dumps(params))
    return root
