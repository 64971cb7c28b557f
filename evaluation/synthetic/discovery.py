"""Synthetic single-object scenes for TokenCut, written in the VOC07 layout (boxes) and the ECSSD layout (masks).

A scene (240 x 180) is a cluttered background with one salient object on top:
- the background is a Voronoi tiling of ``CLUTTER`` cells painted with ``MATERIALS`` materials, each a region of
  scenes.py's kind (a class shown only as its stripe texture, a chromaticity of its own); the materials use
  every class but the object's, and their hues lie within ``BACKGROUND_SPREAD`` of one hue, so that the
  oracle's field (dominated by the colour term) makes the clutter one loosely connected cluster;
- the object is its own class and colour (a hue opposite the background's): a body (an ellipse) with ``LIMBS``
  thin limbs (bars ``LIMB_WIDTH`` pixels wide) reaching out of it, 15-40 % of the image in all; the box and
  the mask are those of the whole shape.
The limbs are what sharp upsampling is rewarded for: on the backbone's grid a limb is about one token wide and
mixed with the clutter around it, so a cut on blurred token features loses the limbs (and with them much of the
box), while the true field on the upsampled grid keeps them; the body alone still gives *an* answer, so the task
is neither trivial nor impossible. Measured on 64 scenes by the synthetic benchmark (evaluation/synthetic/
benchmark.py, tasks ``discovery`` and ``salient``: ``python -m evaluation.synthetic --tasks discovery salient
--methods nearest bilinear bicubic``, which adds the ground_truth row): CorLoc nearest 45 %, bilinear 64 %,
bicubic 91 %, GroundTruth 100 %; salient maxF 87.4 / 89.6 / 90.1 / 93.6 % (GroundTruth's F above bilinear's on 63
of the 64 images). The protocols record this dataset as ``synthetic_objects``.

Files (one generator, both layouts): VOC2007/VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml
(the object's box, 1-based inclusive as VOC stores it), ImageSets/Main/trainval.txt} and ECSSD/{img/<id>.jpg,
gt/<id>.png (0/255)}. JPEGs are saved with quality 100 and no chroma subsampling, so the oracle decodes the
re-read files as the generator drew them (tested); the ground truths (box, mask) come from the generator's
exact shape, while the oracle's field that GroundTruth returns is computed from the image as the protocol
reads it back (and resizes it). ``synthetic.json`` is written last; a complete dataset with the same
parameters is reused, never rewritten.
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

from evaluation.synthetic.scenes import CHROMA_GAP, CLASSES, _texture, uniform
from wrc.checkpoint import atomic_write_text

HEIGHT, WIDTH = 180, 240  # VOC-like 3:4 frames
CLUTTER = (10, 16)  # Voronoi cells of the background
MATERIALS = (3, 5)  # background materials (class, colour, texture), each painted on some of the cells
LIMBS = (2, 4)
LIMB_WIDTH = (5.0, 8.0)  # pixels at the generated size
LIMB_LENGTH = (1.3, 2.2)  # times the body's mean radius, beyond the body
AREA = (0.15, 0.40)  # the object's share of the image
BACKGROUND_SPREAD = 0.6  # radians: background hues within +-this of the scene's background hue
OBJECT_SPREAD = 0.4  # radians: the object's hue within +-this of the opposite hue
SATURATION = (0.05, 0.4)  # distance of a chromaticity (r, g) from grey (1/3, 1/3), within the feasible range
MIN_CHANNEL = 0.08
# the background's hue is near one corner of the chromaticity triangle (blue, red, green), where saturated colours
# leave room for several distinct materials; the object's is opposite
CORNER_HUES = (math.atan2(-1, -1), math.atan2(-1, 2), math.atan2(2, -1))
GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"
VOC_BASE = Path("VOC2007") / "VOCdevkit" / "VOC2007"
SALIENT_BASE = Path("ECSSD")


@dataclass
class DiscoveryScene:
    image: torch.Tensor  # (3, H, W) in [0, 1]
    classes: torch.Tensor  # (H, W) int64 indices into CLASSES
    mask: torch.Tensor  # (H, W) bool: the object
    object_class: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """[x1, y1, x2, y2] of the object, 0-based, x2 and y2 exclusive."""
        rows, cols = torch.nonzero(self.mask, as_tuple=True)
        return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def _object_mask(gen: torch.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """An ellipse body with thin limbs, somewhere away from the borders (numpy: thousands of tiny tensor ops are
    slow on a busy machine)."""
    height, width = yy.shape
    short = min(height, width)
    ry, rx = uniform(gen, 0.14, 0.26) * short, uniform(gen, 0.14, 0.26) * short
    cy, cx = uniform(gen, 0.35, 0.65) * height, uniform(gen, 0.35, 0.65) * width
    angle = uniform(gen, 0.0, math.pi)
    dy, dx = yy - cy, xx - cx
    v = dy * math.cos(angle) - dx * math.sin(angle)
    w = dy * math.sin(angle) + dx * math.cos(angle)
    mask = (v / ry) ** 2 + (w / rx) ** 2 <= 1
    limbs = int(torch.randint(LIMBS[0], LIMBS[1] + 1, (), generator=gen))
    start = uniform(gen, 0.0, 2 * math.pi)
    for index in range(limbs):
        direction = start + 2 * math.pi * index / limbs + uniform(gen, -0.3, 0.3)
        length = uniform(gen, *LIMB_LENGTH) * (ry + rx) / 2 + (ry + rx) / 2
        half_width = uniform(gen, *LIMB_WIDTH) / 2
        along = dx * math.cos(direction) + dy * math.sin(direction)
        across = -dx * math.sin(direction) + dy * math.cos(direction)
        mask |= (along >= 0) & (along <= length) & (np.abs(across) <= half_width)
    return mask


def _voronoi(gen: torch.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W) cell index of a random Voronoi tiling."""
    cells = int(torch.randint(CLUTTER[0], CLUTTER[1] + 1, (), generator=gen))
    points = torch.rand(cells, 2, generator=gen).numpy() * np.array(yy.shape, dtype=np.float32)
    distance = (yy[None] - points[:, 0, None, None]) ** 2 + (xx[None] - points[:, 1, None, None]) ** 2
    return distance.argmin(axis=0)


def _max_saturation(angle: float) -> float:
    """The largest distance from grey along ``angle`` in the (r, g) plane keeping every channel >= MIN_CHANNEL."""
    slopes = (math.cos(angle), math.sin(angle), -math.cos(angle) - math.sin(angle))  # d(r, g, b) / d radius
    return min((1 / 3 - MIN_CHANNEL) / -slope for slope in slopes if slope < 0)


def _draw_hue(gen: torch.Generator, taken: list[np.ndarray], hue: float, spread: float) -> np.ndarray:
    """A chromaticity (r, g, b) whose (r, g) offset from grey has an angle within ``spread`` of ``hue``, every
    channel >= MIN_CHANNEL, and >= CHROMA_GAP (max-norm) from every one in ``taken``."""
    for _ in range(2000):
        angle = hue + uniform(gen, -spread, spread)
        radius = uniform(gen, SATURATION[0], min(SATURATION[1], _max_saturation(angle)))
        r, g = 1 / 3 + radius * math.cos(angle), 1 / 3 + radius * math.sin(angle)
        chroma = np.array([r, g, 1 - r - g], dtype=np.float32)
        if all(np.abs(chroma[:2] - t[:2]).max() >= CHROMA_GAP for t in taken):
            return chroma
    raise RuntimeError("could not draw a distinct colour: too many regions for CHROMA_GAP")


def generate_discovery_scene(seed: int, height: int = HEIGHT, width: int = WIDTH) -> DiscoveryScene:
    """The scene of ``seed`` (module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                         indexing="ij")
    for _ in range(100):
        mask = _object_mask(gen, yy, xx)
        if AREA[0] <= mask.mean() <= AREA[1]:
            break
    else:
        raise RuntimeError(f"scene {seed}: no object of {AREA[0]:.0%}-{AREA[1]:.0%} of the image in 100 draws")
    cells = _voronoi(gen, yy, xx)
    object_class = int(torch.randint(len(CLASSES), (), generator=gen))
    background_classes = [c for c in range(len(CLASSES)) if c != object_class]
    materials = int(torch.randint(MATERIALS[0], MATERIALS[1] + 1, (), generator=gen))
    material = torch.randint(materials, (int(cells.max()) + 1,), generator=gen).numpy()[cells]  # (H, W) per cell
    regions = [(mask, object_class)] + [
        ((material == m) & ~mask, background_classes[int(torch.randint(len(background_classes), (), generator=gen))])
        for m in range(materials)]
    image, classes, chromas = np.zeros((3, height, width), np.float32), np.zeros((height, width), np.int64), []
    corner = CORNER_HUES[int(torch.randint(len(CORNER_HUES), (), generator=gen))]
    hue = corner + uniform(gen, -0.3, 0.3)
    for index, (area, cls) in enumerate(regions):
        chroma = (_draw_hue(gen, chromas, hue + math.pi, OBJECT_SPREAD) if index == 0
                  else _draw_hue(gen, chromas, hue, BACKGROUND_SPREAD))
        chromas.append(chroma)
        peak = uniform(gen, 0.45, 0.68)  # brightest channel, so 1 + contrast never clips
        colour = chroma * peak / chroma.max()
        texture = _texture(gen, cls, torch.from_numpy(yy[area]), torch.from_numpy(xx[area])).numpy()  # region only
        image[:, area] = colour[:, None] * texture
        classes[area] = cls
    return DiscoveryScene(torch.from_numpy(image), torch.from_numpy(classes), torch.from_numpy(mask), object_class)


def voc_xml(name: str, box: tuple[int, int, int, int], height: int, width: int, class_name: str) -> str:
    """A VOC annotation with one object; the box stored 1-based and inclusive, as VOC does."""
    x1, y1, x2, y2 = box
    return (f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"<object><name>{class_name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax>"
            f"<ymax>{y2}</ymax></bndbox></object></annotation>\n")


def save_jpeg(image: torch.Tensor, path: Path) -> None:
    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path, quality=100, subsampling=0)


def write_discovery_dataset(root: Path, num_images: int, seed: int = 0) -> Path:
    """Write ``num_images`` scenes (seeds ``seed``, ``seed + 1``, ...) in both layouts under ``root``, unless a
    complete dataset with the same parameters is already there; returns ``root``."""
    root = Path(root)
    params = {"generator_version": GENERATOR_VERSION, "num_images": num_images, "seed": seed,
              "height": HEIGHT, "width": WIDTH}
    manifest = root / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == params:
        return root
    for folder in (root / VOC_BASE.parts[0], root / SALIENT_BASE):
        shutil.rmtree(folder, ignore_errors=True)
    voc, salient = root / VOC_BASE, root / SALIENT_BASE
    for folder in (voc / "JPEGImages", voc / "Annotations", voc / "ImageSets" / "Main", salient / "img",
                   salient / "gt"):
        folder.mkdir(parents=True, exist_ok=True)
    names = [f"{index:06d}" for index in range(num_images)]
    for index, name in enumerate(names):
        scene = generate_discovery_scene(seed + index)
        save_jpeg(scene.image, voc / "JPEGImages" / f"{name}.jpg")
        shutil.copyfile(voc / "JPEGImages" / f"{name}.jpg", salient / "img" / f"{name}.jpg")
        (voc / "Annotations" / f"{name}.xml").write_text(
            voc_xml(name, scene.box, HEIGHT, WIDTH, CLASSES[scene.object_class]))
        Image.fromarray(scene.mask.numpy().astype(np.uint8) * 255).save(salient / "gt" / f"{name}.png")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(names) + "\n")
    atomic_write_text(manifest, json.dumps(params))
    return root
