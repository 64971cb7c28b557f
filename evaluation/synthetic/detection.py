"""Generated detection scenes with exact boxes and masks, written in the COCO layout (the ``detection`` protocol's
ground-truth version, scored by the same loader and pycocotools).

A scene (``size`` pixels, square or (H, W)) is a flat background with 1-3 flat distractor shapes and 2-4 objects
painted on top, all of scenes.py's kind (ellipses, rotated rectangles, triangles; every region its own
chromaticity, its class shown only as a luminance texture). The objects' categories are their textures:

    id 1 "horizontal" stripes, id 2 "vertical" stripes, id 3 "plaid"; the flat distractors are background.

So, as in the synthetic benchmark, colour says where a region is and texture says what it is: the detector must
read the class from the oracle backbone's features (evaluation/synthetic/oracle.py), not from a pixel's colour.
Objects never overlap one another (a shape touching an earlier object is drawn again), so each object's mask is
its whole shape and its box the tight box of that mask ([x, y, w, h] in pixel edges); masks are stored as RLE,
areas are mask pixel counts. A shape under ``MIN_AREA`` pixels is drawn again.

Files: ``<root>/{train2017,val2017}/<id>.jpg`` (quality 100, no chroma subsampling, so the oracle decodes the
re-read files as drawn) and ``<root>/annotations/instances_{train2017,val2017}.json`` (with ``info`` and
``licenses``, as pycocotools expects); the two splits use disjoint seeds. ``synthetic.json`` is written last; a
complete dataset with the same parameters is reused, never rewritten.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from evaluation.synthetic.discovery import save_jpeg
from evaluation.synthetic.scenes import _draw_chroma, _shape_mask, _texture
from wrc.checkpoint import atomic_write_text

CATEGORIES = ({"id": 1, "name": "horizontal"}, {"id": 2, "name": "vertical"}, {"id": 3, "name": "plaid"})
TEXTURE_OF = {1: 1, 2: 2, 3: 3}  # category id -> class index of scenes.CLASSES
OBJECTS, DISTRACTORS = (2, 4), (1, 3)
MIN_AREA = 48  # pixels of a drawn shape
GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"
SPLITS = {"train2017": 0, "val2017": 5_000_000}  # split -> seed offset


@dataclass
class DetectionScene:
    image: torch.Tensor  # (3, H, W) in [0, 1]
    masks: list[np.ndarray]  # (H, W) bool per object
    category_ids: list[int]


def _draw_shape(gen: torch.Generator, yy: torch.Tensor, xx: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """A shape of at least MIN_AREA pixels touching none of ``taken`` (False for a scene too full to fit one)."""
    for _ in range(50):
        mask = _shape_mask(gen, yy, xx, min(yy.shape))
        if int(mask.sum()) >= MIN_AREA and not bool((mask & taken).any()):
            return mask
    return torch.zeros_like(taken)


def generate_detection_scene(seed: int, size: int | tuple[int, int] = 128) -> DetectionScene:
    """The scene of ``seed`` (module docstring)."""
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < 32:
        raise ValueError(f"size must be at least 32 pixels per side; got {size}")
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    nothing = torch.zeros(height, width, dtype=torch.bool)
    distractors = [_draw_shape(gen, yy, xx, nothing)
                   for _ in range(int(torch.randint(DISTRACTORS[0], DISTRACTORS[1] + 1, (), generator=gen)))]
    objects, category_ids, taken = [], [], nothing.clone()
    for _ in range(int(torch.randint(OBJECTS[0], OBJECTS[1] + 1, (), generator=gen))):
        mask = _draw_shape(gen, yy, xx, taken)
        if mask.any():
            objects.append(mask)
            category_ids.append(CATEGORIES[int(torch.randint(len(CATEGORIES), (), generator=gen))]["id"])
            taken |= mask
    image, chromas = torch.zeros(3, height, width), []
    regions = [(torch.ones_like(nothing), 0)] + [(m, 0) for m in distractors] + [
        (m, TEXTURE_OF[c]) for m, c in zip(objects, category_ids, strict=True)]
    for area, cls in regions:  # painted in order: objects last, on top of the distractors
        chroma = _draw_chroma(gen, chromas)
        chromas.append(chroma)
        peak = 0.45 + 0.23 * float(torch.rand((), generator=gen))  # brightest channel: 1 + contrast never clips
        colour = chroma * peak / chroma.max()
        image[:, area] = colour[:, None] * _texture(gen, cls, yy, xx)[area]
    return DetectionScene(image, [m.numpy() for m in objects], category_ids)


def annotation(ann_id: int, image_id: int, mask: np.ndarray, category_id: int) -> dict:
    """A COCO instance annotation of an exact mask: RLE segmentation, tight box in pixel edges, pixel area."""
    rows, cols = np.nonzero(mask)
    x1, y1, x2, y2 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(mask.sum()),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}}


def write_split(root: Path, split: str, num_images: int, size: int | tuple[int, int], seed: int) -> None:
    folder = root / split
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    images, annotations = [], []
    for index in range(num_images):
        image_id = index + 1
        scene = generate_detection_scene(seed + SPLITS[split] + index, size)
        name = f"{image_id:012d}.jpg"
        save_jpeg(scene.image, folder / name)
        height, width = scene.image.shape[-2:]
        images.append({"id": image_id, "file_name": name, "height": int(height), "width": int(width)})
        for mask, category_id in zip(scene.masks, scene.category_ids, strict=True):
            annotations.append(annotation(len(annotations) + 1, image_id, mask, category_id))
    instances = {"info": {"description": "synthetic detection scenes (evaluation/synthetic/detection.py)"},
                 "licenses": [], "images": images, "annotations": annotations, "categories": list(CATEGORIES)}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "annotations" / f"instances_{split}.json", json.dumps(instances))


def write_synthetic_coco(root: str | Path, train_images: int, val_images: int, size: int | tuple[int, int] = 128,
                         seed: int = 0) -> Path:
    """Write both splits under ``root`` (unless a complete dataset with these parameters is there); returns root."""
    root = Path(root)
    params = {"generator_version": GENERATOR_VERSION, "train_images": train_images, "val_images": val_images,
              "size": list(size) if isinstance(size, (tuple, list)) else size, "seed": seed}
    manifest = root / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == params:
        return root
    manifest.unlink(missing_ok=True)
    for split, count in (("train2017", train_images), ("val2017", val_images)):
        write_split(root, split, count, size, seed)
    atomic_write_text(manifest, json.dumps(params))
    return root
