"""COCO instances in their real layout, ViTDet's large-scale jitter, and pycocotools' box and mask AP.

Layout: ``<root>/{train2017,val2017}/*.jpg`` and ``<root>/annotations/instances_{train2017,val2017}.json`` (any split
name works: ``<root>/<split>/`` and ``annotations/instances_<split>.json``). Every image the json lists must exist
(checked once, at start). Categories keep their COCO ids in the json and in predictions; the detector's labels
are 1..K in the order of the sorted ids (``CategoryMap``), 0 is the background.

Training targets leave out crowd regions (``iscrowd=1``) and boxes under one pixel, as ViTDet's loader does;
evaluation scores every image against the whole json, crowd regions included (pycocotools ignores them).

Large-scale jitter (ViTDet's "LSJ", ``LargeScaleJitter``): a horizontal flip (p = 0.5), a resize by a random
factor in [0.1, 2.0] of the scale that fits the image into ``size`` x ``size``, then a random ``size`` x ``size``
crop where the image is larger and zero padding (black, bottom/right) where it is smaller; instances whose mask
leaves the crop are dropped, boxes are the tight boxes of the cropped masks. Each draw comes from the sample's
own seed (the resumable sampler's), so a resumed run sees the same crops.

Evaluation (``coco_metrics``): boxes as [x, y, w, h] and masks as RLE of (probability > 0.5), scored by
COCOeval for ``bbox`` and ``segm``: AP (IoU 0.50:0.95), AP50, AP75, APs, APm, APl as fractions; a size range
without ground truth is None (pycocotools' -1). No prediction at all scores 0 (pycocotools' loadRes raises on an
empty list).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import Dataset

from wrc.data.io import read_rgb
from wrc.data.masks import decode_segmentation

METRIC_KEYS = ("ap", "ap50", "ap75", "aps", "apm", "apl")  # COCOeval.stats[0:6]
IOU_TYPES = {"box": "bbox", "mask": "segm"}  # metric prefix -> pycocotools iouType
MASK_THRESHOLD = 0.5


class CocoLayoutError(FileNotFoundError):
    """The dataset is not in the COCO layout; the message names what is missing and where it should be."""


def annotation_file(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def load_coco(path: str | os.PathLike) -> COCO:
    """pycocotools' index of an instances json, without its console chatter."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@dataclass(frozen=True)
class CategoryMap:
    """COCO category ids <-> the detector's labels 1..K (sorted ids; 0 is the background)."""

    ids: tuple[int, ...]
    names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.ids) + 1

    def label(self, category_id: int) -> int:
        return self.ids.index(category_id) + 1

    def category(self, label: int) -> int:
        return self.ids[label - 1]

    @classmethod
    def of(cls, coco: COCO) -> CategoryMap:
        categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in categories), tuple(str(c["name"]) for c in categories))

    def check_covers(self, other: CategoryMap, where: str) -> None:
        """Refuse a dataset with category ids this detector has no label for."""
        unknown = sorted(set(other.ids) - set(self.ids))
        if unknown:
            raise ValueError(f"{where} has category ids {unknown} unknown to the detector (trained on ids "
                             f"{list(self.ids)}): evaluate on the categories it was trained on")


class CocoInstances(Dataset):
    """COCO images and instance targets. Items: ``(image (3, H, W) in [0, 1], target)`` with target ``boxes``
    (N, 4) xyxy float, ``labels`` (N,) int64 (1..K), ``masks`` (N, H, W) uint8 and ``image_id``; an item may be
    ``(index, seed)`` (the resumable sampler's), whose seed draws the augmentation.

    Args:
        root: the folder holding ``<split>/`` and ``annotations/``.
        split: ``train2017``, ``val2017``, or any split named the same way.
        augment: ``LargeScaleJitter`` for training; None returns the images as they are.
        argument: how a user names ``root`` (in messages).
    """

    def __init__(self, root: str | os.PathLike | None, split: str, *, augment: LargeScaleJitter | None = None,
                 argument: str = "root") -> None:
        if root is None or not Path(root).is_dir():
            raise CocoLayoutError(f"{argument}={str(root)!r} is not a folder: pass the COCO folder holding {split}/ "
                                  f"and annotations/instances_{split}.json")
        self.root, self.split, self.augment = Path(root), split, augment
        self.annotations = annotation_file(root, split)
        if not self.annotations.is_file():
            raise CocoLayoutError(f"missing annotation file {self.annotations} (COCO layout: {argument}/annotations/"
                                  f"instances_{split}.json beside {argument}/{split}/)")
        self.coco = load_coco(self.annotations)
        self.categories = CategoryMap.of(self.coco)
        if not self.categories.ids:
            raise ValueError(f"{self.annotations} lists no categories")
        self.image_ids = sorted(self.coco.getImgIds())
        missing = [info["file_name"] for info in self.coco.loadImgs(self.image_ids)
                   if not (self.root / split / info["file_name"]).is_file()]
        if missing:
            raise CocoLayoutError(f"{len(missing)} of the {len(self.image_ids)} images {self.annotations.name} lists "
                                  f"are not in {self.root / split}: {missing[:3]}{'...' if len(missing) > 3 else ''}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: int) -> Path:
        return self.root / self.split / self.coco.loadImgs(image_id)[0]["file_name"]

    def target(self, image_id: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """The training target of one image: non-crowd instances with a box of at least one pixel."""
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
                if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        masks = np.stack([decode_segmentation(a["segmentation"], height, width) for a in anns]) if anns else \
            np.zeros((0, height, width), np.uint8)
        labels = torch.tensor([self.categories.label(a["category_id"]) for a in anns], dtype=torch.int64)
        return {"boxes": boxes, "labels": labels, "masks": torch.from_numpy(masks), "image_id": torch.tensor(image_id)}

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, seed = item if isinstance(item, tuple) else (item, item)
        image_id = self.image_ids[index]
        image = read_rgb(self.image_path(image_id))
        target = self.target(image_id, *image.shape[-2:])
        if self.augment is not None:
            image, target = self.augment(image, target, random.Random(seed))
        return image, target


def collate(items: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """A batch as torchvision's detectors take it: a list of images and a list of targets."""
    return [image for image, _ in items], [target for _, target in items]


@dataclass(frozen=True)
class LargeScaleJitter:
    """ViTDet's LSJ (module docstring): flip, resize by a factor in ``scale_range`` of the fitting scale, fixed
    ``size`` crop or pad."""

    size: int = 1024
    scale_range: tuple[float, float] = (0.1, 2.0)
    flip: bool = True

    def __call__(self, image: torch.Tensor, target: dict[str, torch.Tensor],
                 rng: random.Random) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        masks = target["masks"]
        if self.flip and rng.random() < 0.5:
            image, masks = image.flip(-1), masks.flip(-1)
        height, width = image.shape[-2:]
        scale = rng.uniform(*self.scale_range) * min(self.size / height, self.size / width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=scale < 1)[0].clamp(0, 1)
        if masks.shape[0]:
            masks = F.interpolate(masks[None].float(), size=(new_h, new_w), mode="nearest")[0].to(torch.uint8)
        else:
            masks = masks.new_zeros((0, new_h, new_w))
        top = rng.randint(0, max(0, new_h - self.size))
        left = rng.randint(0, max(0, new_w - self.size))
        image = image[:, top : top + self.size, left : left + self.size]
        masks = masks[:, top : top + self.size, left : left + self.size]
        pad = (0, self.size - image.shape[-1], 0, self.size - image.shape[-2])
        image, masks = F.pad(image, pad), F.pad(masks, pad)
        keep = masks.flatten(1).bool().any(dim=1)
        masks = masks[keep]
        boxes = masks_to_boxes(masks)
        return image, {**target, "boxes": boxes, "labels": target["labels"][keep], "masks": masks}


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-empty masks -> (N, 4) tight xyxy boxes in pixel-edge coordinates (x2, y2 exclusive)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4))
    rows, cols = masks.bool().any(dim=2), masks.bool().any(dim=1)  # N, H and N, W
    y = torch.arange(masks.shape[1])
    x = torch.arange(masks.shape[2])
    big = max(masks.shape[1:]) + 1
    y1 = torch.where(rows, y, big).amin(1)
    y2 = torch.where(rows, y, -1).amax(1) + 1
    x1 = torch.where(cols, x, big).amin(1)
    x2 = torch.where(cols, x, -1).amax(1) + 1
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def detections_to_results(image_id: int, output: dict[str, torch.Tensor],
                          categories: CategoryMap) -> tuple[list[dict], list[dict]]:
    """One image's detector output -> COCO results (boxes, masks), with the dataset's category ids."""
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    box_results = [{"image_id": int(image_id), "category_id": categories.category(label), "bbox": [round(v, 2)
                    for v in box], "score": round(score, 5)} for box, label, score in zip(xywh, labels, scores,
                                                                                        strict=True)]
    mask_results = []
    if "masks" in output:
        binary = (output["masks"].detach().float().cpu()[:, 0] > MASK_THRESHOLD).numpy().astype(np.uint8)
        for mask, label, score in zip(binary, labels, scores, strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            mask_results.append({"image_id": int(image_id), "category_id": categories.category(label),
                                 "segmentation": rle, "score": round(score, 5)})
    return box_results, mask_results


def coco_metrics(coco: COCO, results: list[dict], iou_type: str, image_ids: list[int] | None = None
                 ) -> dict[str, float | None]:
    """COCOeval's AP, AP50, AP75, APs, APm, APl (fractions) of ``results`` against ``coco`` for ``iou_type``
    (``bbox`` | ``segm``), over ``image_ids`` (None: every image); zeros when there is no result."""
    if iou_type not in IOU_TYPES.values():
        raise ValueError(f"iou_type={iou_type!r}; expected one of {tuple(IOU_TYPES.values())}")
    if not results:  # loadRes([]) raises: no detection is AP 0 wherever there is ground truth
        return dict.fromkeys(METRIC_KEYS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco.loadRes(json.loads(json.dumps(results)))  # loadRes adds keys: give it a copy
        evaluator = COCOeval(coco, detections, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: (None if value < 0 else float(value)) for key, value in zip(METRIC_KEYS, evaluator.stats,
                                                                           strict=False)}


def metric_names() -> list[str]:
    """The record's metric names: box_ap ... box_apl, mask_ap ... mask_apl."""
    return [f"{prefix}_{key}" for prefix in IOU_TYPES for key in METRIC_KEYS]


def score(coco: COCO, box_results: list[dict], mask_results: list[dict],
          image_ids: list[int] | None = None) -> dict[str, float | None]:
    """Box and mask metrics under the record's names (``metric_names``)."""
    metrics: dict[str, float | None] = {}
    for prefix, results in (("box", box_results), ("mask", mask_results)):
        for key, value in coco_metrics(coco, results, IOU_TYPES[prefix], image_ids).items():
            metrics[f"{prefix}_{key}"] = value
    return metrics
