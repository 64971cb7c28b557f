"""Precomputed segmentation masks in SA-1B's layout, for the objectives that use them (LoftUp's SAM-mask terms).

SA-1B ships beside each image ``sa_<id>.jpg`` a ``sa_<id>.json``: ``{"image": {"height", "width", ...},
"annotations": [{"segmentation": {"size": [H, W], "counts": <COCO RLE>}, ...}, ...]}``. ``data.masks_root`` is a
folder laid out like ``data.root``: the masks of ``<root>/<rel>/<name>.<ext>`` are ``<masks_root>/<rel>/<name>.json``
(SA-1B's own folders, where both lie side by side, are ``masks_root = root``). Masks keep the file's order (later
masks overwrite earlier ones in LoftUp's pseudo-target), at most ``max_masks`` of them (LoftUp: 150).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

MAX_MASKS = 150  # LoftUp pads every image's masks to 150


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 mask of a COCO segmentation: polygons, uncompressed or compressed RLE (SA-1B's, COCO's)."""
    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return coco_mask.decode(rle)


class MaskFileError(ValueError):
    """A mask file that cannot be used; the message names the file and what is wrong."""


def mask_file(image: Path, root: str | os.PathLike, masks_root: str | os.PathLike) -> Path:
    """Where the masks of ``image`` (a file below ``root``) lie below ``masks_root``."""
    relative = image.relative_to(Path(os.path.expanduser(str(root))))
    return Path(os.path.expanduser(str(masks_root))) / relative.with_suffix(".json")


def read_masks(path: Path, height: int, width: int, max_masks: int = MAX_MASKS) -> list[np.ndarray]:
    """The first ``max_masks`` masks of an SA-1B JSON file as (H, W) uint8 arrays; they must have the image's size."""
    try:
        content = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise MaskFileError(f"{path} is not JSON ({err})") from err
    annotations = content.get("annotations") if isinstance(content, dict) else None
    if not isinstance(annotations, list):
        raise MaskFileError(f"{path} has no 'annotations' list (SA-1B's layout: {{'annotations': [{{'segmentation': "
                            "{'size': [H, W], 'counts': ...}}, ...]}})")
    masks = []
    for index, annotation in enumerate(annotations[:max_masks]):
        rle = annotation.get("segmentation") if isinstance(annotation, dict) else None
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise MaskFileError(f"{path}: annotation {index} has no RLE segmentation {{'size', 'counts'}}")
        if list(rle["size"]) != [height, width]:
            raise MaskFileError(f"{path}: annotation {index} is {rle['size'][0]}x{rle['size'][1]} (H x W), the "
                                f"image {height}x{width}: masks must be at the image's resolution")
        masks.append(decode_segmentation(rle, height, width))
    return masks
