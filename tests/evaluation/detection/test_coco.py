"""The COCO layout, LSJ and pycocotools scoring on a fake COCO (eval_protocols.md F.4) with hand-computed answers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.detection.coco import (
    CategoryMap,
    CocoInstances,
    CocoLayoutError,
    LargeScaleJitter,
    detections_to_results,
    masks_to_boxes,
    score,
)

RECTANGLES = {1: (8, 10, 30, 40, 1), 2: (20, 4, 50, 24, 3)}  # image id: x1, y1, x2, y2 (exclusive), category id


def fake_coco(root: Path, split: str = "val2017") -> Path:
    """Two 64 x 64 JPEGs with one coloured rectangle each; categories 1 and 3; polygon segmentations."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for image_id, (x1, y1, x2, y2, category) in RECTANGLES.items():
        pixels = np.full((64, 64, 3), 40, np.uint8)
        pixels[y1:y2, x1:x2] = (200, 60 * category, 30)
        Image.fromarray(pixels).save(root / split / f"{image_id:012d}.jpg", quality=95)
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 64, "height": 64})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": category, "iscrowd": 0,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                            "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
    instances = {"info": {}, "licenses": [], "images": images, "annotations": annotations,
                 "categories": [{"id": 1, "name": "one"}, {"id": 3, "name": "three"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    return root


def ground_truth_as_detections(dataset: CocoInstances) -> tuple[list[dict], list[dict]]:
    boxes, masks = [], []
    for index, image_id in enumerate(dataset.image_ids):
        target = dataset[index][1]
        output = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(len(target["labels"])),
                  "masks": target["masks"][:, None].float()}
        b, m = detections_to_results(image_id, output, dataset.categories)
        boxes, masks = boxes + b, masks + m
    return boxes, masks


def test_ground_truth_fed_back_scores_ap_one(tmp_path):
    dataset = CocoInstances(fake_coco(tmp_path), "val2017")
    assert dataset.categories == CategoryMap((1, 3), ("one", "three"))
    target = dataset[0][1]
    assert target["boxes"].tolist() == [[8, 10, 30, 40]] and target["labels"].tolist() == [1]  # id 1 -> label 1
    assert dataset[1][1]["labels"].tolist() == [2]  # id 3 -> label 2
    assert int(target["masks"].sum()) == 22 * 30  # the polygon's pixels (pycocotools rasterisation of the box)
    metrics = score(dataset.coco, *ground_truth_as_detections(dataset))
    for kind in ("box", "mask"):
        for key in ("ap", "ap50", "ap75", "aps"):
            assert metrics[f"{kind}_{key}"] == pytest.approx(1.0, abs=1e-12)
        assert metrics[f"{kind}_apl"] is None  # no large object: pycocotools' -1


def test_empty_and_wrong_predictions(tmp_path):
    dataset = CocoInstances(fake_coco(tmp_path), "val2017")
    assert set(score(dataset.coco, [], []).values()) == {0.0}  # loadRes([]) would raise
    boxes, masks = ground_truth_as_detections(dataset)
    for result in boxes + masks:
        result["category_id"] = 4 - result["category_id"]  # 1 <-> 3: every detection of the wrong category
    metrics = score(dataset.coco, boxes, masks)
    assert metrics["box_ap"] == 0.0 and metrics["mask_ap"] == 0.0


def test_layout_errors_name_what_is_missing(tmp_path):
    with pytest.raises(CocoLayoutError, match="root='.*nowhere' is not a folder"):
        CocoInstances(tmp_path / "nowhere", "val2017")
    root = fake_coco(tmp_path / "coco")
    with pytest.raises(CocoLayoutError, match=r"missing annotation file .*instances_train2017\.json"):
        CocoInstances(root, "train2017")
    (root / "val2017" / "000000000002.jpg").unlink()
    with pytest.raises(CocoLayoutError, match=r"1 of the 2 images .* are not in .*val2017: \['000000000002.jpg'\]"):
        CocoInstances(root, "val2017")


def test_category_ids_unknown_to_the_model(tmp_path):
    dataset = CocoInstances(fake_coco(tmp_path), "val2017")
    with pytest.raises(ValueError, match=r"category ids \[3\] unknown to the detector"):
        CategoryMap((1, 2)).check_covers(dataset.categories, "val2017")


def test_masks_to_boxes_hand_case():
    masks = torch.zeros(2, 6, 8, dtype=torch.uint8)
    masks[0, 1:3, 2:5] = 1
    masks[1, 5, 7] = 1
    assert masks_to_boxes(masks).tolist() == [[2, 1, 5, 3], [7, 5, 8, 6]]


def test_large_scale_jitter_hand_case():
    """A 64 x 32 image into a 128 crop at scale 1: fitting scale 2 (the longer side), a 128 x 64 image padded below
    and right; a rectangle [8, 20) x [4, 12) becomes [16, 40) x [8, 24); the flip mirrors it."""
    image = torch.rand(3, 32, 64)
    masks = torch.zeros(1, 32, 64, dtype=torch.uint8)
    masks[0, 4:12, 8:20] = 1
    target = {"boxes": torch.tensor([[8.0, 4, 20, 12]]), "labels": torch.tensor([1]), "masks": masks}
    out_image, out = LargeScaleJitter(128, (1.0, 1.0), flip=False)(image, target, random.Random(0))
    assert out_image.shape == (3, 128, 128) and out["masks"].shape == (1, 128, 128)
    assert out["boxes"].tolist() == [[16, 8, 40, 24]] and float(out_image[:, 64:].abs().max()) == 0.0
    flipped = None
    for seed in range(20):  # some seed flips
        _, candidate = LargeScaleJitter(128, (1.0, 1.0))(image, target, random.Random(seed))
        if candidate["boxes"][0, 0] != 16:
            flipped = candidate
            break
    assert flipped is not None and flipped["boxes"].tolist() == [[128 - 40, 8, 128 - 16, 24]]


def test_large_scale_jitter_drops_instances_cropped_away_and_is_seeded():
    image = torch.rand(3, 64, 64)
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 0:4, 0:4] = 1  # a corner object: gone from most 2x crops
    masks[1, 20:44, 20:44] = 1  # a central one: always there
    target = {"boxes": masks_to_boxes(masks), "labels": torch.tensor([1, 2]), "masks": masks}
    jitter = LargeScaleJitter(64, (2.0, 2.0), flip=False)
    _, a = jitter(image, target, random.Random(5))
    _, b = jitter(image, target, random.Random(5))
    assert torch.equal(a["boxes"], b["boxes"])
    counts = {len(jitter(image, target, random.Random(seed))[1]["labels"]) for seed in range(10)}
    assert 1 in counts  # the corner object was cropped away (and its label with it)
    for seed in range(10):
        _, out = jitter(image, target, random.Random(seed))
        assert torch.equal(out["boxes"], masks_to_boxes(out["masks"])) and 2 in out["labels"].tolist()
