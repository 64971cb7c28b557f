"""Precomputed masks in SA-1B's layout: decoding, the crop they share with their image, batching, and LoftUp's mask
terms trained from a folder (with clear errors when masks and objective do not fit together)."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from tests.conftest import tiny_train_config
from wrc.data import ImageFolder, build_dataset, stack_batch
from wrc.data.masks import MaskFileError, read_masks
from wrc.data.transforms import crop_geometry, crop_mask
from wrc.training import train


def rle(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}


def write_sa1b(root, count: int = 3, size: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    """SA-1B's layout: sa_<i>.jpg beside sa_<i>.json; each image grey with a red rectangle (mask 0) and a blue square
    (mask 1), at seeded positions. Returns the red rectangles' masks."""
    rng = np.random.default_rng(0)
    height, width = size
    rects = []
    for i in range(count):
        image = np.full((height, width, 3), 128, dtype=np.uint8)
        red, blue = np.zeros(size, bool), np.zeros(size, bool)
        top, left = rng.integers(4, height // 2), rng.integers(4, width // 2)
        red[top:top + 16, left:left + 20] = True
        blue[2:10, width - 12:width - 4] = True
        image[red], image[blue] = (255, 0, 0), (0, 0, 255)
        Image.fromarray(image).save(root / f"sa_{i}.png")
        annotations = [{"segmentation": rle(red), "area": int(red.sum())}, {"segmentation": rle(blue)}]
        (root / f"sa_{i}.json").write_text(json.dumps({"image": {"height": height, "width": width},
                                                       "annotations": annotations}))
        rects.append(red)
    return rects


class TestReadMasks:
    def test_compressed_and_uncompressed_rle_decode_to_the_masks(self, tmp_path):
        a = np.zeros((5, 7), np.uint8)
        a[1:4, 2:6] = 1
        b = np.eye(5, 7, dtype=np.uint8)
        column_major = b.flatten(order="F")  # uncompressed RLE: run lengths over the column-major pixels, from 0
        runs, value, length = [], 0, 0
        for pixel in column_major:
            if pixel == value:
                length += 1
            else:
                runs.append(length)
                value, length = pixel, 1
        runs.append(length)
        path = tmp_path / "m.json"
        path.write_text(json.dumps({"annotations": [{"segmentation": rle(a)},
                                                    {"segmentation": {"size": [5, 7], "counts": runs}}]}))
        masks = read_masks(path, 5, 7)
        assert len(masks) == 2 and np.array_equal(masks[0], a) and np.array_equal(masks[1], b)
        assert len(read_masks(path, 5, 7, max_masks=1)) == 1

    def test_bad_files_name_the_file_and_the_problem(self, tmp_path):
        path = tmp_path / "m.json"
        path.write_text("{not json")
        with pytest.raises(MaskFileError, match="m.json is not JSON"):
            read_masks(path, 5, 7)
        path.write_text(json.dumps({"masks": []}))
        with pytest.raises(MaskFileError, match="no 'annotations' list"):
            read_masks(path, 5, 7)
        path.write_text(json.dumps({"annotations": [{"segmentation": rle(np.ones((4, 7)))}]}))
        with pytest.raises(MaskFileError, match="annotation 0 is 4x7 .* the image 5x7"):
            read_masks(path, 5, 7)


def test_crop_mask_is_nearest_at_pixel_centres_then_mirrored():
    """A 4 x 4 box resized to 8: each pixel becomes a 2 x 2 block (hand-computed), mirrored left-right."""
    mask = np.random.default_rng(1).random((6, 6)) > 0.5
    expected = np.kron(mask[1:5, 2:6], np.ones((2, 2), bool))
    assert np.array_equal(crop_mask(mask, 8, (2, 1, 6, 5), flip=False).numpy(), expected)
    assert np.array_equal(crop_mask(mask, 8, (2, 1, 6, 5), flip=True).numpy(), expected[:, ::-1])


def test_masks_go_through_their_image_s_random_crop_and_flip(tmp_path):
    """The red pixels of every training crop are where the red rectangle's mask says (up to the bicubic edge)."""
    write_sa1b(tmp_path)
    dataset = ImageFolder(tmp_path, 32, train=True, min_scale=0.3, masks_root=tmp_path)
    assert dataset.delivers_masks

    def core(region):  # pixels whose four neighbours share their side: away from the bicubic edge
        return region & torch.roll(region, 1, 0) & torch.roll(region, -1, 0) & torch.roll(region, 1, 1) & \
            torch.roll(region, -1, 1)

    blue_in_view, flips = 0, {crop_geometry(64, 48, random.Random(seed), 0.3)[1] for seed in range(12)}
    assert flips == {True, False}  # both orientations among these crops
    for seed in range(12):
        item = dataset[(seed % 3, seed)]
        masks, image = item["masks"], item["image"]
        assert masks.shape == (2, 32, 32) and masks.dtype == torch.bool
        for mask, colour in zip(masks, (image[0] - image[1], image[2] - image[0]), strict=True):
            assert (colour[core(mask)] > 0.8).all() and (colour[core(~mask)] < 0.2).all()
        blue_in_view += bool(core(masks[1]).any())
    assert blue_in_view  # the blue square (mask 1) is in view in some crops, and checked there


def test_a_missing_mask_file_is_said_up_front_or_skipped_and_counted(tmp_path):
    write_sa1b(tmp_path)
    (tmp_path / "sa_1.json").unlink()
    dataset = ImageFolder(tmp_path, 16, train=False, masks_root=tmp_path)
    assert [dataset[i]["num_skipped"] for i in range(3)] == [0, 1, 0]
    (tmp_path / "sa_0.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"data.masks_root=.* has no masks for the first image .*sa_0.json"):
        ImageFolder(tmp_path, 16, masks_root=tmp_path)


def test_batches_pad_masks_with_empty_ones():
    items = [{"image": torch.zeros(3, 4, 4), "num_skipped": 0, "masks": torch.ones(2, 4, 4, dtype=torch.bool)},
             {"image": torch.zeros(3, 4, 4), "num_skipped": 1, "masks": torch.ones(1, 4, 4, dtype=torch.bool)}]
    batch = stack_batch(items)
    assert batch["masks"].shape == (2, 2, 4, 4) and batch["num_skipped"] == 1
    assert batch["masks"][0].all() and batch["masks"][1, 0].all() and not batch["masks"][1, 1].any()
    assert "masks" not in stack_batch([{k: v for k, v in it.items() if k != "masks"} for it in items])


def test_max_masks_must_be_positive(tmp_path):
    write_sa1b(tmp_path)
    with pytest.raises(ValueError, match="data.max_masks must be >= 1; got 0"):
        ImageFolder(tmp_path, 16, masks_root=tmp_path, max_masks=0)


def test_the_config_passes_masks_root_and_max_masks(tmp_path):
    write_sa1b(tmp_path)
    cfg = {"name": "image_folder", "root": str(tmp_path), "image_size": 16, "masks_root": str(tmp_path),
           "max_masks": 1}
    assert build_dataset(cfg)[(0, 0)]["masks"].shape == (1, 16, 16)


def loftup_config(tmp_path, data: dict, objective: dict) -> dict:
    config = tiny_train_config(tmp_path / "run", train={"max_steps": 2, "ckpt_every": 2})
    config["model"] = {"name": "loftup"}
    config["objective"] = {"name": "loftup_stage1", "num_jitters": 1, **objective}
    config["data"] = {"name": "image_folder", "root": str(tmp_path / "sa1b"), "image_size": 32, "batch_size": 2,
                      "num_workers": 0, **data}
    return config


def test_loftup_trains_its_mask_term_from_the_folder(tmp_path, caplog):
    (tmp_path / "sa1b").mkdir()
    write_sa1b(tmp_path / "sa1b")
    config = loftup_config(tmp_path, {"masks_root": str(tmp_path / "sa1b")}, {"mask_weight": 1.0})
    with caplog.at_level(logging.INFO, logger="wrc"):
        result = train(config)
    assert "the SAM-mask term is on (weight 1, alpha 0.8)" in caplog.text
    assert all(row["loss_mask"] > 0 for row in result.history)


def test_masks_and_objective_must_fit_together(tmp_path, caplog):
    (tmp_path / "sa1b").mkdir()
    write_sa1b(tmp_path / "sa1b")
    with pytest.raises(ValueError, match="mask term .* delivers no masks: pass data.masks_root="):
        train(loftup_config(tmp_path, {}, {"mask_weight": 1.0}))
    lift = tiny_train_config(tmp_path / "lift")
    lift["data"] = {"name": "image_folder", "root": str(tmp_path / "sa1b"), "image_size": 32, "batch_size": 2,
                    "num_workers": 0, "masks_root": str(tmp_path / "sa1b")}
    with pytest.raises(ValueError, match=r"data.masks_root is set, or a dataset built with masks\) but "
                                         "objective=lift_multiscale takes none"):
        train(lift)
    with caplog.at_level(logging.INFO, logger="wrc"):
        result = train(loftup_config(tmp_path, {}, {}))
    assert "the SAM-mask term is off (weight 0)" in caplog.text and "data.masks_root=" in caplog.text
    assert all("loss_mask" not in row for row in result.history)
