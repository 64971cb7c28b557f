"""The SPair-71k PCK protocol on fake datasets in the official layout: hand-computed PCK with identity features,
pad-resize, both pair-file names, sampling, the error cases, resume after a kill, the synthetic task, end to end."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import evaluation.protocols.spair as spair_protocol
import evaluation.synthetic.keypoints as synthetic_keypoints
from evaluation.keypoints.matching import (
    DescriptorCache,
    correct_counts,
    descriptor_grid,
    match_points,
    pixel_descriptors,
    resize_weights,
    to_pixels,
)
from evaluation.keypoints.spair import PadResize, category_of_file, pair_files, sample_pairs
from evaluation.protocol import evaluate, get_protocol
from evaluation.protocols.synthetic import GroundTruth
from evaluation.records import read_record
from evaluation.synthetic.keypoints import CATEGORIES, make_pair, save_jpeg, write_synthetic_spair
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.tables import build_table
from wrc import provenance
from wrc.data.io import read_rgb
from wrc.extractor import DenseFeatureExtractor, build_extractor
from wrc.provenance import code_identity
from wrc.settings import SettingsError

KPS = {"0": [10, 10], "1": [30, 20], "2": None}  # the E fake dataset: K = 3 slots, slot 2 never visible


class PixelCode(nn.Module):
    """Identity features: sines and cosines of each pixel's x and y (patch 1), so the cosine of two pixels' features
    is 1 only when they are the same pixel; the nearest neighbour of a source pixel is that pixel."""

    periods = (3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0, 144.0, 377.0)  # incommensurate; the longest > any image
    embed_dim, patch_size = 4 * len(periods), 1

    def spec(self) -> dict:
        return {"name": "pixel_code", "periods": list(self.periods)}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, _, h, w = image.shape
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        omega = 2 * math.pi / torch.tensor(self.periods)[:, None, None]
        code = torch.cat([torch.cos(omega * xx), torch.sin(omega * xx), torch.cos(omega * yy), torch.sin(omega * yy)])
        return code[None].expand(b, -1, -1, -1)


def save_jpeg_pixels(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=100, subsampling=0)


def fake_spair(root: Path, categories: dict[str, list[tuple[float, float]]] | None = None, *,
               names: tuple[str, ...] = (":", "_"), size: tuple[int, int] = (64, 48), **pair_fields) -> Path:
    """The fake dataset of eval_protocols.md E: per category images a, b (W x H = ``size``; b is a's content moved by
    the first shift) and the pair a -> b under each name in ``names`` (one pair, ``000001-a-b``, stored under both
    names as a dataset holding renamed copies next to the official files has it). ``categories`` maps a category to
    the (dx, dy) by which each target keypoint is moved; the default is {"cat": [(0, 0), (0, 0)]} (identical
    images)."""
    categories = categories or {"cat": [(0, 0), (0, 0)]}
    width, height = size
    content = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    for category, shifts in categories.items():
        kps = {str(i): [10 + 20 * i, 10 + 10 * i] for i in range(len(shifts))} if len(shifts) > 2 else KPS
        dx, dy = shifts[0]
        save_jpeg_pixels(root / "JPEGImages" / category / "a.jpg", content)
        save_jpeg_pixels(root / "JPEGImages" / category / "b.jpg", np.roll(content, (int(dy), int(dx)), axis=(0, 1)))
        for image in ("a", "b"):
            folder = root / "ImageAnnotation" / category
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{image}.json").write_text(json.dumps({"filename": f"{image}.jpg", "kps": kps}))
        ids = [k for k, v in kps.items() if v is not None]
        pair = {"pair_id": 1, "src_imname": "a.jpg", "trg_imname": "b.jpg", "src_imsize": [width, height, 3],
                "trg_imsize": [width, height, 3], "src_bndbox": [0, 0, width - 1, height - 1],
                "trg_bndbox": [0, 0, width - 1, height - 1], "category": category,
                "src_kps": [kps[k] for k in ids],
                "trg_kps": [[kps[k][0] + s[0], kps[k][1] + s[1]] for k, s in zip(ids, shifts, strict=True)],
                "kps_ids": ids, "mirror": 0, **pair_fields}
        folder = root / "PairAnnotation" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        for separator in names:
            (folder / f"000001-a-b{separator}{category}.json").write_text(json.dumps(pair))
    return root


def fake_settings(tmp_path: Path) -> dict:
    """The protocol on the fake dataset, as small as still proves the run (for the contract test)."""
    return {"root": str(fake_spair(tmp_path / "spair")), "image_size": 64, "pairs_per_category": 2}


def identity_extractor() -> DenseFeatureExtractor:
    return build_extractor(PixelCode(), "bilinear")


def run_spair(tmp_path: Path, extractor: DenseFeatureExtractor, run: str = "run", **settings):
    return evaluate("spair", extractor, {"upsample_factor": 1, **settings}, tmp_path / run)


# --- PCK with identity features, hand-computed ---------------------------------------------------------------------

def test_identity_features_on_identical_images_give_pck_one(tmp_path):
    record = run_spair(tmp_path, identity_extractor(), root=str(fake_spair(tmp_path / "data")), image_size=64)
    assert record.metrics["pck@0.1"] == record.metrics["pck@0.05"] == record.metrics["pck@0.01"] == 1.0
    assert record.per_item["keypoints"] == {"cat": 200} and record.per_item["pairs"] == {"cat": 100}  # 2 per pair


def test_a_one_pixel_shift_lowers_pck_at_001_only(tmp_path):
    """b is a moved 1 pixel right (and its keypoints with it): positional features predict the unmoved pixel, an
    error of 1 pixel against thresholds of 0.01 x 63 = 0.63 (wrong) and 0.1 x 63 = 6.3 (right)."""
    root = fake_spair(tmp_path / "data", {"cat": [(1, 0), (1, 0)]})
    metrics = run_spair(tmp_path, identity_extractor(), root=str(root), image_size=64).metrics
    assert (metrics["pck@0.1"], metrics["pck@0.05"], metrics["pck@0.01"]) == (1.0, 1.0, 0.0)


def test_pck_is_the_mean_over_categories_of_pooled_keypoints(tmp_path):
    """cat: 2 keypoints, errors 0; dog: 3 keypoints, errors 0, 2, 5 pixels (x2 at 128: the box side 63 x 2 scales
    alike). Thresholds 6.3, 3.15, 0.63 (x2): dog 3/3, 2/3, 1/3; the means with cat (1, 1, 1) are 1, 5/6, 2/3 (pooled
    over both categories it would be 1, 4/5, 3/5)."""
    root = fake_spair(tmp_path / "data", {"cat": [(0, 0), (0, 0)], "dog": [(0, 0), (2, 0), (0, 5)]})
    record = run_spair(tmp_path, identity_extractor(), root=str(root), image_size=128, pairs_per_category=None)
    assert record.metrics["pck@0.1"] == pytest.approx(1.0)
    assert record.metrics["pck@0.05"] == pytest.approx(5 / 6)
    assert record.metrics["pck@0.01"] == pytest.approx(2 / 3)
    assert record.per_item["pck@0.01"] == pytest.approx({"cat": 1.0, "dog": 1 / 3})
    assert record.per_item["keypoints"] == {"cat": 2, "dog": 3}  # each pair once, though stored under both names
    assert record.per_item["pairs"] == {"cat": 1, "dog": 1}
    assert record.dataset == {"name": "spair71k", "split": "test", "root": str(root), "pairs": 2,
                              "categories": ["cat", "dog"], "pairs_per_category": None}
    assert record.resolution["image_size"] == 128 and record.resolution["descriptor_grid"] == [128, 128]


def test_a_landscape_source_and_a_portrait_target_are_each_pad_resized_by_their_own_size(tmp_path):
    """Source 64 x 48 at 120: scale 1.875, 120 x 90 pasted 15 rows down; target 40 x 60: scale 2, 80 x 120 pasted 20
    columns right. Identity features send a source keypoint (x, y) to the target pixel (int(1.875 x), floor(1.875 y +
    15)); the truth is (2 x' + 20, 2 y'). The box [4, 6, 34, 56] has max side 50, x 2 = 100: thresholds 10, 5, 1.

        source (x, y)   prediction   truth (x', y') -> padded   error   @0.1  @0.05  @0.01
        (16, 8)         (30, 30)     (5, 15.25)  -> (30, 30.5)   0.5     y     y      y
        (32.5, 20.3)    (60, 53)     (18.5, 26.5) -> (57, 53)    3       y     y      n
        (48, 40)        (90, 90)     (37.4, 45)  -> (94.8, 90)   4.8     y     y      n
        (8, 44)         (15, 97)     (1, 48.5)   -> (22, 97)     7       y     n      n
        (60, 4)         (112, 22)    (40, 11)    -> (100, 22)    12      n     n      n

    PCK 4/5, 3/5, 1/5. Either PadResize used for the other image moves every prediction or truth (the swap of the
    two gives 0/5 at 0.1), and the box scaled by the source's 1.875 (threshold 4.6875 at 0.05) loses the 4.8 one."""
    root = tmp_path / "data"
    source_kps = [[16, 8], [32.5, 20.3], [48, 40], [8, 44], [60, 4]]
    target_kps = [[5, 15.25], [18.5, 26.5], [37.4, 45], [1, 48.5], [40, 11]]
    rng = np.random.default_rng(0)
    for name, (width, height), kps in (("a", (64, 48), source_kps), ("b", (40, 60), target_kps)):
        save_jpeg_pixels(root / "JPEGImages" / "cat" / f"{name}.jpg",
                         rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        folder = root / "ImageAnnotation" / "cat"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps({"filename": f"{name}.jpg",
                                                          "kps": {str(k): v for k, v in enumerate(kps)}}))
    pair = {"pair_id": 1, "src_imname": "a.jpg", "trg_imname": "b.jpg", "src_imsize": [64, 48, 3],
            "trg_imsize": [40, 60, 3], "src_bndbox": [0, 0, 63, 47], "trg_bndbox": [4, 6, 34, 56], "category": "cat",
            "src_kps": source_kps, "trg_kps": target_kps, "kps_ids": ["0", "1", "2", "3", "4"], "mirror": 0}
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "PairAnnotation" / "test" / "000001-a-b:cat.json").write_text(json.dumps(pair))
    record = run_spair(tmp_path, identity_extractor(), root=str(root), image_size=120, pairs_per_category=None)
    assert record.per_item["keypoints"] == {"cat": 5}
    assert record.metrics["pck@0.1"] == pytest.approx(4 / 5)
    assert record.metrics["pck@0.05"] == pytest.approx(3 / 5)
    assert record.metrics["pck@0.01"] == pytest.approx(1 / 5)


def test_correct_counts_against_a_hand_computed_case():
    predicted = torch.tensor([[10, 10], [30, 20], [5, 5]])
    truth = torch.tensor([[10.0, 10.5], [33.0, 24.0], [20.0, 5.0]])  # errors 0.5, 5 and 15 pixels
    # box side 50: thresholds 5, 2.5, 0.5; an error equal to its threshold is wrong (strictly less is right)
    assert correct_counts(predicted, truth, 50.0, (0.1, 0.05, 0.01)) == [1, 1, 0]
    assert correct_counts(predicted, truth, 60.0, (0.1, 0.05, 0.01)) == [2, 1, 1]  # 6, 3, 0.6


def test_match_points_takes_the_pixel_of_the_keypoint_and_the_best_target_pixel():
    """One-hot descriptors per pixel of a 4 x 4 image; the target is the source mirrored left-right, so a keypoint at
    (x, y) goes to (3 - x, y). Fractional keypoints take the pixel (row floor(y), col int(x)); points on or past the
    image's edge are clamped to it: (4.0, -0.5) reads (row 0, col 3), (-1.5, 4.2) reads (row 3, col 0)."""
    source = torch.eye(16).view(16, 4, 4)
    target = source.flip(-1)
    points = torch.tensor([[0.0, 0.0], [1.9, 2.2], [3.0, 3.99], [4.0, -0.5], [-1.5, 4.2]])
    assert match_points(source, target, points, 4).tolist() == [[3, 0], [2, 2], [0, 3], [0, 0], [3, 3]]


def test_feature_resizes_match_torch_bilinear_and_pils_lanczos():
    grid = torch.randn(1, 3, 7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for size in (56, 4):  # up and down
        weights = resize_weights(7, size, "bilinear")
        expected = F.interpolate(grid, size=(size, 5), mode="bilinear", align_corners=False)
        assert torch.allclose(torch.einsum("yi,bcij->bcyj", weights, grid), expected, atol=1e-12)
        pil = np.stack([np.array(Image.fromarray(channel.numpy().astype(np.float32), mode="F")
                                 .resize((size, size), Image.Resampling.LANCZOS)) for channel in grid[0]])
        assert np.allclose(to_pixels(grid, size, "lanczos")[0].numpy(), pil, atol=1e-4)
    rows, cols = torch.tensor([0, 3, 55]), torch.tensor([54, 0, 27])
    for kind in ("bilinear", "lanczos"):
        assert torch.allclose(pixel_descriptors(grid[0], rows, cols, 56, kind),
                              to_pixels(grid, 56, kind)[0][:, rows, cols].T, atol=1e-12)


def test_match_points_equals_matching_the_descriptors_resized_to_the_image():
    """Second formulation: both grids resized to the image, the source read at the keypoints' pixels, dot products
    with every target pixel (what LiFT computes): each prediction is a pixel of the maximum similarity (border
    pixels beyond the outer cell centres tie exactly, so the pixel itself may be another of the tied ones)."""
    gen = torch.Generator().manual_seed(0)
    source, target = (F.normalize(torch.randn(2, 16, 7, 7, generator=gen, dtype=torch.float64), dim=1))
    points = torch.rand(40, 2, generator=gen, dtype=torch.float64) * 56
    full_source, full_target = to_pixels(source[None], 56)[0], to_pixels(target[None], 56)[0]
    queries = full_source[:, points[:, 1].floor().long(), points[:, 0].long()].T
    similarity = torch.einsum("nc,chw->nhw", queries, full_target)
    predicted = match_points(source, target, points, 56)
    reached = similarity[torch.arange(40), predicted[:, 1], predicted[:, 0]]
    assert torch.allclose(reached, similarity.flatten(1).max(dim=1).values, rtol=0, atol=1e-12)
    full_source, full_target = to_pixels(source[None], 56, "lanczos")[0], to_pixels(target[None], 56, "lanczos")[0]
    queries = full_source[:, points[:, 1].floor().long(), points[:, 0].long()].T
    lanczos = torch.einsum("nc,chw->nhw", queries, full_target).flatten(1)
    predicted_lanczos = match_points(source, target, points, 56, "lanczos")
    assert torch.allclose(lanczos[torch.arange(40), predicted_lanczos[:, 1] * 56 + predicted_lanczos[:, 0]],
                          lanczos.max(dim=1).values, rtol=0, atol=1e-12)
    best = similarity.flatten(1).argmax(dim=1)
    inside = ((best % 56 - 27.5).abs() < 24) & ((best // 56 - 27.5).abs() < 24)  # maxima away from the tied borders
    assert inside.sum() >= 10 and torch.equal(predicted[inside], torch.stack([best % 56, best // 56], 1)[inside])


def test_descriptors_are_unit_length_on_the_upsampled_grid_and_resized_bilinearly(test_vit):
    extractor = build_extractor(test_vit, "bilinear")
    grid = descriptor_grid(extractor, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)), 2)
    assert grid.shape == (1, 64, 8, 8)
    assert torch.allclose(grid.norm(dim=1), torch.ones(1, 8, 8), atol=1e-5)
    # second formulation of align_corners=False: sample each pixel centre ((j + 0.5) / 64 in [0, 1])
    centres = (torch.arange(64) + 0.5) / 64 * 2 - 1
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    sampled = F.grid_sample(grid, torch.stack([xx, yy], -1)[None], mode="bilinear", padding_mode="border",
                            align_corners=False)
    assert torch.allclose(to_pixels(grid, 64), sampled, atol=1e-5)


# --- the dataset: pad-resize, names, sampling ------------------------------------------------------------------------

def test_pad_resize_moves_keypoints_as_computed_by_hand():
    landscape = PadResize.of(64, 48, 32)  # scale 0.5, 32 x 24 pasted 4 rows down
    assert (landscape.scale, landscape.width, landscape.height, landscape.left, landscape.top) == (0.5, 32, 24, 0, 4)
    points = torch.tensor([[10.0, 10.0, 1.0], [30.0, 20.0, 1.0], [7.0, 7.0, 0.0]])
    assert landscape.points(points).tolist() == [[5.0, 9.0, 1.0], [15.0, 14.0, 1.0], [0.0, 0.0, 0.0]]
    portrait = PadResize.of(30, 50, 100)  # scale 2, 60 x 100 pasted 20 columns right
    assert (portrait.width, portrait.height, portrait.left, portrait.top) == (60, 100, 20, 0)
    assert portrait.points(torch.tensor([[3.0, 7.0, 1.0]])).tolist() == [[26.0, 14.0, 1.0]]
    odd = PadResize.of(100, 75, 56)  # short side round(56 * 0.75) = 42, offset (56 - 42) // 2 = 7
    assert (odd.height, odd.top, odd.scale) == (42, 7, 0.56)


def test_pad_resize_pastes_a_lanczos_resize_on_black():
    pixels = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    padded = PadResize.of(64, 48, 32).image(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    expected = np.array(Image.fromarray(pixels).resize((32, 24), Image.Resampling.LANCZOS))
    assert padded.shape == (3, 32, 32)
    assert padded[:, :4].eq(0).all() and padded[:, 28:].eq(0).all()
    assert torch.equal((padded[:, 4:28] * 255).round().to(torch.uint8), torch.from_numpy(expected).permute(2, 0, 1))


def test_both_pair_file_names_are_found_and_assigned_to_the_longest_category(tmp_path):
    fake_spair(tmp_path, {"cat": [(0, 0), (0, 0)]}, names=(":",))
    fake_spair(tmp_path, {"dog": [(0, 0), (0, 0)]}, names=("_",))
    fake_spair(tmp_path, {"big_cat": [(0, 0), (0, 0)]}, names=("_",))  # "..._big_cat.json" also ends in "_cat.json"
    found = pair_files(tmp_path, "test", ["big_cat", "cat", "dog"], ["big_cat", "cat", "dog"])
    assert {c: [p.name for p in paths] for c, paths in found.items()} == {
        "big_cat": ["000001-a-b_big_cat.json"], "cat": ["000001-a-b:cat.json"], "dog": ["000001-a-b_dog.json"]}
    assert category_of_file("000001-2008_000585-2008_004385_pottedplant.json", ["plant", "pottedplant"]) == \
        "pottedplant"


def test_a_pair_under_both_names_is_listed_once_as_its_colon_file(tmp_path, caplog):
    folder = tmp_path / "PairAnnotation" / "test"
    folder.mkdir(parents=True)
    names = ["000001-a-b:cat.json", "000001-a-b_cat.json",  # one pair under both names
             "000002-c-d_cat.json",  # only renamed
             "000003-e-f_cat.json", "000003-e-f:cat.json"]  # both again
    for name in names:
        (folder / name).write_text("{}")
    with caplog.at_level(logging.WARNING, logger="wrc"):
        found = pair_files(tmp_path, "test", ["cat"], ["cat"])
    assert [p.name for p in found["cat"]] == ["000001-a-b:cat.json", "000002-c-d_cat.json", "000003-e-f:cat.json"]
    assert "2 pair files" in caplog.text and "['000001-a-b_cat.json', '000003-e-f_cat.json']" in caplog.text


def test_sampling_with_replacement_is_deterministic_and_is_lifts_stream():
    files = {"dog": [Path(f"d{i}") for i in range(3)], "cat": [Path(f"c{i}") for i in range(5)]}
    first, again = sample_pairs(files, 100, seed=0), sample_pairs(files, 100, seed=0)
    assert first == again and list(first) == ["cat", "dog"]
    assert len(first["dog"]) == 100 and len(set(first["dog"])) == 3  # with replacement
    assert sample_pairs(files, 100, seed=1) != first
    np.random.seed(0)  # LiFT's formulation: the global stream, seeded once, drawn per (sorted) category
    lift = {c: [files[c][i] for i in np.random.choice(len(files[c]), 100)] for c in ("cat", "dog")}
    assert first == lift
    assert sample_pairs(files, None, seed=0) == {"cat": files["cat"], "dog": files["dog"]}


def test_a_subset_of_categories_gets_the_sample_of_the_full_run():
    """LiFT's stream runs over every category: dog's draws follow cat's (3 files: rejection sampling, so how much of
    the stream cat uses depends on its count). categories=[dog] must score the dog pairs of the full run, not the
    first draws of a fresh stream."""
    files = {"dog": [Path(f"d{i}") for i in range(5)], "cat": [Path(f"c{i}") for i in range(3)],
             "eel": [Path(f"e{i}") for i in range(7)]}
    np.random.seed(0)
    lift = {c: [files[c][i] for i in np.random.choice(len(files[c]), 100)] for c in ("cat", "dog", "eel")}
    assert sample_pairs(files, 100, seed=0, categories=["dog"]) == {"dog": lift["dog"]}
    assert sample_pairs(files, 100, seed=0, categories=["eel", "cat"]) == {"cat": lift["cat"], "eel": lift["eel"]}
    fresh = [files["dog"][i] for i in np.random.RandomState(0).choice(5, 100)]
    assert fresh != lift["dog"]  # the case tells the two apart


def test_a_run_of_one_category_scores_the_pairs_a_full_run_draws(tmp_path):
    root = fake_spair(tmp_path / "data", {"cat": [(0, 0), (0, 0)], "dog": [(0, 0), (0, 0)]}, names=(":",))
    folder = root / "PairAnnotation" / "test"
    for category, count in (("cat", 3), ("dog", 4)):  # more pairs: copies of the one pair under other ids
        for number in range(2, count + 1):
            shutil.copy(folder / f"000001-a-b:{category}.json", folder / f"{number:06d}-a-b:{category}.json")
    run_spair(tmp_path, identity_extractor(), root=str(root), image_size=32, pairs_per_category=6, categories=["dog"])
    saved = json.loads((tmp_path / "run" / "spair_categories" / "dog.json").read_text())["sample"]
    np.random.seed(0)
    lift = {c: [f"{i + 1:06d}-a-b:{c}.json" for i in np.random.choice(n, 6)] for c, n in (("cat", 3), ("dog", 4))}
    assert [f"{i + 1:06d}-a-b:dog.json" for i in np.random.RandomState(0).choice(4, 6)] != lift["dog"]  # tells apart
    assert saved == lift["dog"] and sorted((tmp_path / "run" / "spair_categories").iterdir()) == \
        [tmp_path / "run" / "spair_categories" / "dog.json"]


def test_descriptor_cache_computes_each_image_once_and_evicts_the_oldest():
    calls = []

    def compute(keys):
        calls.append(list(keys))
        return torch.zeros(len(keys), 1, 2, 2)  # 16 bytes each

    cache = DescriptorCache(compute, max_bytes=32, batch_size=2)
    cache.get(["a", "b", "a"])
    cache.get(["b", "c"])  # a is evicted (3 x 16 bytes > 32)
    cache.get(["b", "a"])
    assert calls == [["a", "b"], ["c"], ["a"]] and cache.computed == 4


# --- errors ----------------------------------------------------------------------------------------------------------

def expect_error(tmp_path, match, root, **settings):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run_spair(tmp_path, identity_extractor(), root=str(root) if root is not None else None, image_size=64,
                  **settings)


def test_missing_root_and_folders_are_named(tmp_path):
    expect_error(tmp_path, "protocol.root is not set: pass protocol.root=/path/to/SPair-71k", None)
    expect_error(tmp_path, r"protocol.root: .*nowhere not found; expected the layout SPair-71k/", tmp_path / "nowhere")
    root = fake_spair(tmp_path / "data")
    expect_error(tmp_path, r"PairAnnotation/val not found", root, split="val")
    for folder in ("JPEGImages", "ImageAnnotation"):
        (root / folder).rename(root / f"{folder}.moved")
        expect_error(tmp_path, rf"protocol.root: {root / folder} not found", root)
        (root / f"{folder}.moved").rename(root / folder)


def test_a_category_without_pair_files_names_both_conventions(tmp_path):
    root = fake_spair(tmp_path / "data")
    (root / "ImageAnnotation" / "dog").mkdir()
    expect_error(tmp_path, r"no pair files of category 'dog'.*'<id>-<src>-<trg>:dog.json'.*'<id>-<src>-<trg>_dog.json'",
                 root)
    expect_error(tmp_path, r"protocol.categories=\['horse'\]: \['horse'\]; the categories of .* are \['cat', 'dog'\]",
                 root, categories=["horse"])
    expect_error(tmp_path, r"no pair files of category 'dog'.*'dog' is not evaluated, but pairs are drawn from one "
                 r"random stream over all categories.*protocol.pairs_per_category=null", root, categories=["cat"])
    record = run_spair(tmp_path, identity_extractor(), "every_pair", root=str(root), image_size=32,
                       categories=["cat"], pairs_per_category=None)  # no stream: dog's pairs are not needed
    assert record.per_item["pairs"] == {"cat": 1}


def test_bad_pair_files_are_refused(tmp_path):
    expect_error(tmp_path, r"000001-a-b:cat.json: mirror=1; the LiFT protocol evaluates unmirrored pairs only",
                 fake_spair(tmp_path / "mirror", names=(":",), mirror=1))
    expect_error(tmp_path, r"000001-a-b:cat.json: its 'category' is 'dog' but its file name says 'cat'",
                 fake_spair(tmp_path / "misfiled", names=(":",), category="dog"))
    expect_error(tmp_path, r"000001-a-b:cat.json \(trg_imname\): .*JPEGImages/cat/missing.jpg not found",
                 fake_spair(tmp_path / "no_image", names=(":",), trg_imname="missing.jpg"))
    expect_error(tmp_path, r"000001-a-b:cat.json: says b.jpg is 50x48 \(W x H\) but the image is 64x48",
                 fake_spair(tmp_path / "wrong_size", names=(":",), trg_imsize=[50, 48, 3]))


def test_bad_settings_are_refused(tmp_path, test_vit):
    protocol = get_protocol("spair")
    with pytest.raises(SettingsError, match=r"protocol.alphas=\[0.2\]; expected a non-empty subset of"):
        protocol.settings({"alphas": [0.2]})
    with pytest.raises(SettingsError, match="protocol.dataset='pascal'; expected one of"):
        protocol.settings({"dataset": "pascal"})
    with pytest.raises(SettingsError, match="protocol.pairs_per_category must be >= 1, or null"):
        protocol.settings({"pairs_per_category": 0})
    with pytest.raises(SettingsError, match=r"protocol.split='train'; expected one of \('trn', 'val', 'test'\)"):
        protocol.settings({"split": "train"})
    with pytest.raises(SettingsError, match="protocol.image_size=72 is neither one of LiFT's sizes"):
        run_spair(tmp_path, build_extractor(test_vit, "bilinear"), root=str(tmp_path), image_size=72)


# --- resume ----------------------------------------------------------------------------------------------------------

def test_a_killed_run_resumes_at_the_next_category_with_the_same_result(tmp_path, monkeypatch):
    root = str(fake_spair(tmp_path / "data", {"cat": [(0, 0), (0, 0)], "dog": [(0, 0), (2, 0), (0, 5)],
                                              "eel": [(1, 0), (0, 0)]}))
    settings = {"root": root, "image_size": 64, "pairs_per_category": 3}
    reference = run_spair(tmp_path, identity_extractor(), "reference", **settings)
    scored = []
    original = spair_protocol.score_pair

    def killed_in_dog(pair, *args):
        scored.append(pair.category)
        if pair.category == "dog":
            raise KeyboardInterrupt  # the job is killed in the middle of the second category
        return original(pair, *args)

    monkeypatch.setattr(spair_protocol, "score_pair", killed_in_dog)
    with pytest.raises(KeyboardInterrupt):
        run_spair(tmp_path, identity_extractor(), **settings)
    assert sorted(p.name for p in (tmp_path / "run" / "spair_categories").iterdir()) == ["cat.json"]
    scored.clear()
    monkeypatch.setattr(spair_protocol, "score_pair", lambda pair, *args: scored.append(pair.category) or
                        original(pair, *args))
    resumed = run_spair(tmp_path, identity_extractor(), **settings)
    assert scored == ["dog"] * 3 + ["eel"] * 3  # cat was not scored again
    assert {k: v for k, v in resumed.metrics.items() if k != "seconds_per_pair"} == \
        {k: v for k, v in reference.metrics.items() if k != "seconds_per_pair"}
    assert resumed.per_item == reference.per_item


def test_max_categories_stops_on_purpose_and_another_run_is_refused(tmp_path, test_vit, monkeypatch):
    root = str(fake_spair(tmp_path / "data", {"cat": [(0, 0), (0, 0)], "dog": [(0, 0), (0, 0)]}))
    settings = {"root": root, "image_size": 64, "pairs_per_category": 2}
    assert run_spair(tmp_path, identity_extractor(), max_categories=1, **settings) is None
    assert not (tmp_path / "run" / "result.json").exists()
    with pytest.raises(ValueError, match=r"cat.json holds results of another run \(settings.upsample_factor: 1 -> 2"):
        evaluate("spair", identity_extractor(), {**settings, "upsample_factor": 2}, tmp_path / "run")
    with pytest.raises(ValueError, match=r"cat.json holds results of another run \(backbone\."):
        evaluate("spair", build_extractor(test_vit, "bilinear"), {**settings, "upsample_factor": 1},
                 tmp_path / "run")
    # the code: version and commit are the identity's; a fix to matching must not resume onto old counts
    version = code_identity()
    saved = json.loads((tmp_path / "run" / "spair_categories" / "cat.json").read_text())["identity"]
    assert saved["code"] == version
    for key, value in (("commit", "0123abc"), ("version", "99.0")):
        monkeypatch.setattr(provenance, "code_identity", lambda key=key, value=value: {**version, key: value})
        with pytest.raises(ValueError, match=rf"cat.json holds results made by other code \(code.{key}: .*"
                                             rf"-> '{value}'"):
            run_spair(tmp_path, identity_extractor(), **settings)
    # ...but whether the tree was dirty is not: editing files must not refuse every rerun
    monkeypatch.setattr(provenance, "code_identity", lambda: dict(version))
    monkeypatch.setattr(provenance, "code_version", lambda: {**version, "dirty": True})
    record = run_spair(tmp_path, identity_extractor(), **settings)  # max_categories is not part of the identity
    assert record.per_item["pairs"] == {"cat": 2, "dog": 2}


# --- synthetic keypoints ---------------------------------------------------------------------------------------------

def test_synthetic_jpegs_decode_to_the_generators_classes(tmp_path):
    oracle = OracleBackbone()
    for index, category in enumerate(CATEGORIES):
        pair = make_pair(category, seed=index, image_size=224)
        for name, rendered in (("source", pair.source), ("target", pair.target)):
            save_jpeg(rendered.image, tmp_path / f"{category}_{name}.jpg")
            decoded = oracle.class_probabilities(read_rgb(tmp_path / f"{category}_{name}.jpg")[None]).argmax(1)[0]
            assert (decoded == rendered.classes).float().mean() >= 0.98, (category, name)


def test_synthetic_dataset_is_written_in_the_spair_layout_once(tmp_path, monkeypatch):
    root = write_synthetic_spair(tmp_path / "synthetic", pairs_per_category=2, image_size=128)
    pairs = sorted(p.name for p in (root / "PairAnnotation" / "test").iterdir())
    assert pairs == sorted(f"00000{i}-s000{i - 1}-t000{i - 1}:{c}.json" for c in CATEGORIES for i in (1, 2))
    occluded = [json.loads((root / "PairAnnotation" / "test" / p).read_text()) for p in pairs if "occluded" in p]
    for pair in occluded:  # hidden keypoints: null in the target's annotation, absent from the pair
        target = json.loads((root / "ImageAnnotation" / "occluded" / pair["trg_imname"].replace(".jpg", ".json"))
                            .read_text())
        hidden = [k for k, v in target["kps"].items() if v is None]
        assert hidden and not set(hidden) & set(pair["kps_ids"]) and len(pair["kps_ids"]) == 8 - len(hidden)
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    assert write_synthetic_spair(root, pairs_per_category=2, image_size=128) == root
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp  # complete: reused, not rewritten
    write_synthetic_spair(root, pairs_per_category=1, image_size=128)  # other parameters: replaced
    assert len(list((root / "PairAnnotation" / "test").iterdir())) == len(CATEGORIES)
    # a replacement killed while deleting the old files leaves no marker that the old parameters would still match
    original = shutil.rmtree

    def killed(path, *args, **kwargs):
        original(path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_keypoints.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_spair(root, pairs_per_category=2, image_size=128)
    monkeypatch.undo()
    assert not (root / "synthetic.json").exists() and not (root / "JPEGImages").exists()
    write_synthetic_spair(root, pairs_per_category=1, image_size=128)  # the old parameters: written again
    assert len(list((root / "JPEGImages").rglob("*.jpg"))) == 2 * len(CATEGORIES)
    (root / "notes.txt").write_text("not the generator's")
    (root / "synthetic.json").unlink()
    with pytest.raises(ValueError, match=r"holds files the synthetic keypoint generator did not write \(\['notes"):
        write_synthetic_spair(root, pairs_per_category=1, image_size=128)


def test_ground_truth_beats_bilinear_on_synthetic_keypoints(tmp_path):
    """The true field (from the JPEGs the protocol reads back) against bilinear tokens: sharp, correct upsampling
    finds the marker centres; the task rewards it at PCK@0.05 and PCK@0.01."""
    protocol = get_protocol("spair")
    settings = protocol.settings({"dataset": "synthetic", "synthetic_pairs": 3, "pairs_per_category": None,
                                  "image_size": 128})
    oracle = protocol.make_backbone(settings)
    scores = {}
    for name, upsampler in (("ground_truth", GroundTruth(oracle.embed_dim, oracle.patch_size)),
                            ("bilinear", build_extractor(oracle, "bilinear").upsampler)):
        if scores:  # the same generated data: a complete copy is reused, not written again
            shutil.copytree(tmp_path / "ground_truth" / "synthetic_data", tmp_path / name / "synthetic_data")
        record = evaluate(protocol, DenseFeatureExtractor(oracle, upsampler), settings, tmp_path / name)
        assert record.dataset["name"] == "synthetic_keypoints" and record.per_item["pairs"]["occluded"] == 3
        scores[name] = record.metrics
    assert scores["ground_truth"]["pck@0.05"] >= 0.85
    assert scores["ground_truth"]["pck@0.05"] > scores["bilinear"]["pck@0.05"] + 0.3
    assert scores["ground_truth"]["pck@0.01"] > scores["bilinear"]["pck@0.01"] + 0.05
    # the same run folder with another seed: refused before its synthetic data (seed 0) is deleted and rewritten
    manifest = tmp_path / "bilinear" / "synthetic_data" / "synthetic.json"
    written = (manifest.read_text(), manifest.stat().st_mtime_ns)
    with pytest.raises(ValueError, match=r"holds results of another run \(settings.seed: 0 -> 1\)"):
        evaluate(protocol, build_extractor(oracle, "bilinear"), dataclasses.replace(settings, seed=1),
                 tmp_path / "bilinear")
    assert (manifest.read_text(), manifest.stat().st_mtime_ns) == written and json.loads(written[0])["seed"] == 0


# --- end to end ------------------------------------------------------------------------------------------------------

def test_protocol_end_to_end_on_test_vit_with_bilinear(tmp_path, test_vit):
    settings = fake_settings(tmp_path)
    record = evaluate("spair", build_extractor(test_vit, "bilinear"), settings, tmp_path / "run")
    saved = read_record(tmp_path / "run" / "result.json")
    assert saved == record and saved.protocol == "spair" and saved.dataset["name"] == "spair71k"
    assert set(saved.metrics) == {"pck@0.1", "pck@0.05", "pck@0.01", "seconds_per_pair"}
    assert all(0 <= saved.metrics[m] <= 1 for m in ("pck@0.1", "pck@0.05", "pck@0.01"))
    assert saved.per_item["keypoints"] == {"cat": 4} and saved.resolution["image_size"] == 64
    assert saved.config == dataclasses.asdict(get_protocol("spair").settings(settings))
    markdown, _ = build_table([saved], "spair")
    assert "| bilinear |" in markdown and "spair71k 64 pck@0.1 (%)" in markdown  # a column per image size


def test_config_composes_from_the_dataclass():
    from hydra import compose, initialize_config_dir

    from evaluation.__main__ import register_schemas
    from tests.conftest import REPO_ROOT

    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "config" / "eval")):
        cfg = compose("evaluate", overrides=["protocol=spair", "backbone=test_vit", "protocol.categories=[cat,dog]"])
    assert dict(cfg.protocol) == dataclasses.asdict(get_protocol("spair").settings({"categories": ["cat", "dog"]}))
