"""Probe datasets on fake copies built on the fly in their real layouts and file formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.datasets import COCO_COARSE, COCO_FINE_TO_COARSE, ade20k, cityscapes, coco_stuff27, nyuv2, voc2012
from tests.helpers.fake_datasets import save_label, save_rgb
from tests.wrc.reliability.png16 import write_png16


def test_voc_reads_palette_indices_and_keeps_255(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    save_rgb(base / "JPEGImages" / "2007_000032.jpg")
    save_label(base / "SegmentationClass" / "2007_000032.png", [0, 1, 15, 255], palette=True)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split in ("train", "val"):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("2007_000032\n")
    item = voc2012(tmp_path, "val", size=32)[0]
    assert item["image"].shape == (3, 32, 32) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert set(item["label"].unique().tolist()) == {0, 1, 15, 255}
    assert voc2012(tmp_path, "train", size=32).num_classes == 21


def test_ade20k_reduce_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for folder, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        save_rgb(base / "images" / folder / f"{stem}.jpg")
        save_label(base / "annotations" / folder / f"{stem}.png", [0, 1, 5, 150])
    reduced = ade20k(tmp_path, "val", size=None)
    assert reduced.num_classes == 150
    assert set(reduced[0]["label"].unique().tolist()) == {255, 0, 4, 149}
    full = ade20k(tmp_path, "training", size=None, reduce_zero_label=False)
    assert full.num_classes == 151 and set(full[0]["label"].unique().tolist()) == {0, 1, 5, 150}


def make_cityscapes(root: Path, values: list[int]) -> None:
    for split in ("train", "val"):
        stem = "aachen_000000_000019"
        save_rgb(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", 32, 64)
        save_label(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", values, 32, 64)


def test_cityscapes_train_ids_and_crops(tmp_path):
    make_cityscapes(tmp_path, [0, 7, 8, 26, 33])
    full = cityscapes(tmp_path, "val", size=16)[0]
    assert full["image"].shape == (3, 16, 32) and full["label"].shape == (16, 32)
    assert set(full["label"].unique().tolist()) == {255, 0, 1, 13, 18}
    centre = cityscapes(tmp_path, "train", size=16, crop="center")[0]
    assert centre["label"].shape == (16, 16)


def test_cityscapes_label_ids_out_of_range(tmp_path):
    make_cityscapes(tmp_path, [7, 40])
    with pytest.raises(ValueError, match="labelIds must be 0..33"):
        cityscapes(tmp_path, "val", size=None)[0]


@pytest.mark.parametrize("layout", ["featup", "jafar"])
def test_coco_stuff_fine_to_coarse(tmp_path, layout):
    images, labels, curated = (("cocostuff/images", "cocostuff/annotations", "cocostuff/curated") if layout == "featup"
                               else ("dataset/images", "dataset/annotations", "curated"))
    for split in ("train2017", "val2017"):
        save_rgb(tmp_path / images / split / "000000000139.jpg")
        save_label(tmp_path / labels / split / "000000000139.png", [0, 105, 156, 255])
        (tmp_path / curated / split).mkdir(parents=True, exist_ok=True)
        (tmp_path / curated / split / "Coco164kFull_Stuff_Coarse.txt").write_text("000000000139\n")
    item = coco_stuff27(tmp_path, "val", size=None)[0]
    assert set(item["label"].unique().tolist()) == {9, 23, 255}
    assert (item["label"][:, :16] == 9).all() and (item["label"][:, 48:] == 255).all()


def test_coco_table_maps_every_fine_id_once():
    fine = [f for group in COCO_COARSE.values() for f in group]
    assert len(COCO_COARSE) == 27 and sorted(fine) == list(range(182))
    assert COCO_FINE_TO_COARSE[0] == 9 and COCO_FINE_TO_COARSE[105] == 23 and COCO_FINE_TO_COARSE[156] == 23
    assert COCO_FINE_TO_COARSE[255] == 255 and COCO_FINE_TO_COARSE[182] == 255


def test_nyuv2_depth_in_metres(tmp_path):
    save_rgb(tmp_path / "test" / "images" / "00001.png")
    depth = np.full((48, 64), 2500, dtype=np.uint16)
    depth[0, 0] = 0
    (tmp_path / "test" / "depths").mkdir(parents=True)
    Image.fromarray(depth).save(tmp_path / "test" / "depths" / "00001.png")
    item = nyuv2(tmp_path, "test", size=None)[0]
    assert item["depth"][0, 0] == 0 and float(item["depth"][10, 10]) == pytest.approx(2.5)


@pytest.mark.parametrize("loader", [voc2012, ade20k, cityscapes, coco_stuff27, nyuv2])
def test_missing_split_names_the_layout(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match="dataset.root: .* not found; expected the layout"):
        loader(tmp_path, "val")


def test_nyuv2_reads_16_bit_images_and_depth_exactly(tmp_path):
    """16-bit RGB images are scaled by 65535 (not read through their high bytes), 16-bit depth stays integral;
    the oracle is the arrays written to the files."""
    rgb = np.random.default_rng(4).integers(0, 65536, (12, 16, 3)).astype(np.uint16)
    write_png16(tmp_path / "test" / "images" / "00001.png", rgb)
    depth = np.random.default_rng(5).integers(0, 65536, (12, 16)).astype(np.uint16)
    (tmp_path / "test" / "depths").mkdir(parents=True)
    Image.fromarray(depth).save(tmp_path / "test" / "depths" / "00001.png")
    item = nyuv2(tmp_path, "test", size=None)[0]
    expected = torch.from_numpy(rgb.astype(np.float32) / 65535).permute(2, 0, 1)
    torch.testing.assert_close(item["image"], expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(item["depth"], torch.from_numpy(depth.astype(np.float32) / 1000), atol=0, rtol=0)


def test_16_bit_label_maps_keep_their_values(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    save_rgb(base / "images" / "validation" / "ADE_val_00000001.jpg")
    labels = np.tile(np.repeat(np.array([0, 1, 149, 150], np.uint16), 16), (48, 1))
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(labels).save(base / "annotations" / "validation" / "ADE_val_00000001.png")  # mode I;16
    item = ade20k(tmp_path, "val", size=None, reduce_zero_label=False)[0]
    torch.testing.assert_close(item["label"], torch.from_numpy(labels.astype(np.int64)))


def test_colour_label_maps_are_refused_by_name(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    save_rgb(base / "images" / "validation" / "ADE_val_00000001.jpg")
    save_rgb(base / "annotations" / "validation" / "ADE_val_00000001.png")
    with pytest.raises(ValueError, match=r"ADE_val_00000001.png: a label map must be a single-channel image.*'RGB'"):
        ade20k(tmp_path, "val", size=None)[0]
