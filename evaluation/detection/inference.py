"""Run a detector over a COCO-layout split and score it with pycocotools; the predictions are kept as JSON."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from evaluation.detection.coco import CocoInstances, detections_to_results, score
from wrc.checkpoint import atomic_write_text

PREDICTIONS = {"box": "predictions_bbox.json", "mask": "predictions_segm.json"}


@torch.no_grad()
def predict(detector: nn.Module, dataset: CocoInstances, device: torch.device, *, batch_size: int = 4,
            max_images: int | None = None, autocast: AbstractContextManager | None = None,
            ) -> tuple[list[dict], list[dict], list[int]]:
    """COCO results (boxes, masks) for the first ``max_images`` images of ``dataset`` (None: all), and their ids."""
    detector.eval()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    boxes, masks = [], []
    for start in tqdm(range(0, count, batch_size), desc="detect", leave=False):
        indices = range(start, min(start + batch_size, count))
        images = [dataset[i][0].to(device) for i in indices]
        with autocast or nullcontext():
            outputs = detector(images)
        for index, output in zip(indices, outputs, strict=True):
            b, m = detections_to_results(dataset.image_ids[index], output, dataset.categories)
            boxes += b
            masks += m
    return boxes, masks, dataset.image_ids[:count]


def evaluate_detector(detector: nn.Module, dataset: CocoInstances, out_dir: Path, device: torch.device, *,
                      batch_size: int = 4, max_images: int | None = None,
                      autocast: AbstractContextManager | None = None) -> dict[str, float | None]:
    """Box and mask AP of ``detector`` on ``dataset``; writes ``predictions_bbox.json`` and ``predictions_segm.json``
    (the COCO results format) into ``out_dir``."""
    boxes, masks, image_ids = predict(detector, dataset, device, batch_size=batch_size, max_images=max_images,
                                      autocast=autocast)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, results in (("box", boxes), ("mask", masks)):
        atomic_write_text(out_dir / PREDICTIONS[kind], json.dumps(results))
    return score(dataset.coco, boxes, masks, image_ids)
