"""Segmentation and depth metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.metrics import ConfusionMatrix, DepthMetrics, depth_errors


def test_miou_and_accuracy_by_hand():
    """labels  [0 0 1 1 2 255]   predictions [0 1 1 1 0 2]
    class 0: TP 1, FP 1 (the label-2 pixel), FN 1 -> 1/3; class 1: TP 2, FP 1, FN 0 -> 2/3;
    class 2: TP 0, FP 0 (the 255 pixel is ignored), FN 1 -> 0; class 3: empty union -> None."""
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 1, 1, 0, 2]), torch.tensor([0, 0, 1, 1, 2, 255]))
    out = cm.compute()
    assert out["per_class_iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and out["per_class_iou"][3] is None
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert out["pixel_accuracy"] == pytest.approx(3 / 5)
    assert out["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert out["valid_pixels"] == 5


def test_accumulates_over_the_split_not_per_image():
    """Image 1 alone: class 1 absent everywhere; image 2 adds it. IoU comes from the summed counts."""
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0]), torch.tensor([0, 0]))
    cm.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    out = cm.compute()
    assert out["per_class_iou"] == pytest.approx([2 / 3, 1 / 2])


def test_labels_out_of_range_are_an_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"labels out of range: \[7\]"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))


def test_perfect_constant_depth():
    gt = torch.full((2, 4, 5), 2.0)
    gt[0, 0, 0] = 0.0  # invalid, excluded
    metrics = DepthMetrics()
    metrics.update(gt.clone(), gt)
    out = metrics.compute()
    assert out["d1"] == out["d2"] == out["d3"] == 1.0
    for key in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"):
        assert out[key] == pytest.approx(0.0, abs=1e-12)


def test_every_depth_metric_by_hand():
    """gt = [1, 2], pred = [2, 2]: ratios 2 and 1."""
    out = depth_errors(torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 2.0]]))
    e = [math.log(2.0), 0.0]
    assert out["d1"] == out["d2"] == out["d3"] == 0.5  # ratio 2 fails even 1.25^3 = 1.953
    assert out["abs_rel"] == pytest.approx((1 / 1 + 0) / 2)
    assert out["sq_rel"] == pytest.approx((1 / 1 + 0) / 2)
    assert out["rmse"] == pytest.approx(math.sqrt(1 / 2))
    assert out["rmse_log"] == pytest.approx(math.sqrt(e[0] ** 2 / 2))
    assert out["log10"] == pytest.approx(math.log10(2) / 2)
    assert out["silog"] == pytest.approx(100 * math.sqrt(e[0] ** 2 / 2 - (e[0] / 2) ** 2))


def test_depth_thresholds_by_hand():
    """Ratios 1.2, 1.5, 1.9: below 1.25, 1.5625 and 1.953 respectively."""
    out = depth_errors(torch.tensor([1.2, 1.5, 1.9]), torch.ones(3))
    assert (out["d1"], out["d2"], out["d3"]) == pytest.approx((1 / 3, 2 / 3, 1.0))


def test_depth_range_excludes_far_and_missing_pixels():
    gt = torch.tensor([[0.0, 12.0, 4.0]])
    out = depth_errors(torch.tensor([[5.0, 5.0, 4.0]]), gt)
    assert out["rmse"] == 0.0 and out["d1"] == 1.0
    assert depth_errors(torch.ones(2, 2), torch.zeros(2, 2)) is None
