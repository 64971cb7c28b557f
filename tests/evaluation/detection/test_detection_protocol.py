"""The detection protocol: generated scenes in the COCO layout (exact masks and boxes), a detector trained here or
loaded from its checkpoint, and the refusals (another upsampler, another backbone)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.detection.coco import CocoInstances
from evaluation.detection.train import train_detector
from evaluation.protocol import evaluate, get_protocol
from evaluation.records import read_record
from evaluation.synthetic.detection import generate_detection_scene, write_synthetic_coco
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.tables import PAPER_TABLES, paper_table
from tests.evaluation.detection.test_train import TINY_MODEL, tiny_config
from wrc.data.masks import decode_segmentation
from wrc.extractor import build_extractor


def fake_settings(tmp_path) -> dict:
    """A tiny generated set, a detector trained for two steps here."""
    return {"dataset": "synthetic", "synthetic_train_images": 4, "synthetic_val_images": 2, "synthetic_size": 64,
            "image_size": 64, "train_steps": 2, "batch_size": 2, "model": dict(TINY_MODEL)}


def test_generated_scenes_have_exact_non_overlapping_masks(tmp_path):
    scene = generate_detection_scene(3, (64, 96))
    assert scene.image.shape == (3, 64, 96) and 2 <= len(scene.masks) <= 4
    total = np.sum(scene.masks, axis=0)
    assert total.max() == 1  # no two objects share a pixel
    root = write_synthetic_coco(tmp_path, 3, 2, (64, 96), seed=1)
    dataset = CocoInstances(root, "train2017")
    info = dataset.coco.loadImgs(1)[0]
    assert (info["height"], info["width"]) == (64, 96)
    expected = generate_detection_scene(0 + 1, (64, 96))  # train split, seed 1, image id 1
    for ann, mask in zip(dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=1)), expected.masks, strict=True):
        assert np.array_equal(decode_segmentation(ann["segmentation"], 64, 96).astype(bool), mask)
        rows, cols = np.nonzero(mask)
        assert ann["bbox"] == [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
        assert ann["area"] == mask.sum()


def test_the_oracle_reads_the_object_categories_from_the_written_files(tmp_path):
    """Each object's texture class (its category) is what the oracle decodes from the re-read JPEG."""
    root = write_synthetic_coco(tmp_path, 2, 1, 96)
    dataset = CocoInstances(root, "train2017")
    image, target = dataset[0]
    classes = OracleBackbone().class_probabilities(image[None])[0].argmax(0)
    for mask, label in zip(target["masks"].bool(), target["labels"], strict=True):
        assert torch.mode(classes[mask]).values == label  # category id k = class k of scenes.CLASSES


def test_a_trained_detector_is_scored_from_its_checkpoint(tmp_path, test_vit):
    run = train_detector(tiny_config(tmp_path / "detector", train={"max_steps": 2, "ckpt_every": 2}))
    oracle = OracleBackbone(patch_size=16)
    settings = {"dataset": "synthetic", "detector": str(run.run_dir), "synthetic_train_images": 8,
                "synthetic_val_images": 2, "synthetic_size": 64}
    record = evaluate("detection", build_extractor(oracle, "bilinear"), settings, tmp_path / "eval")
    assert record.resolution == {"image_size": 64, "pyramid": "upsampler", "feature_stride": 16}
    assert read_record(tmp_path / "eval" / "result.json").metrics == record.metrics
    assert (tmp_path / "eval" / "predictions_bbox.json").is_file()
    with pytest.raises(ValueError, match="trained with the upsampler .* evaluate it with model=bilinear"):
        evaluate("detection", build_extractor(oracle, "nearest"), settings, tmp_path / "eval2")
    with pytest.raises(ValueError, match="trained on another backbone"):
        evaluate("detection", build_extractor(test_vit, "bilinear"), settings, tmp_path / "eval3")


def test_lift_table4_is_a_paper_table(tmp_path):
    assert PAPER_TABLES["lift-table4"][0].protocol == "detection"
    protocol = get_protocol("detection")
    assert {"box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75"} <= {
        c.metric for c in protocol.table.columns}
    assert callable(paper_table)
