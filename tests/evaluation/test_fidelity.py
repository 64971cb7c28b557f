"""The fidelity protocol: an oracle and a zero upsampler bound the metrics; the report writes one record per method."""

from __future__ import annotations

import json

import pytest
import torch.nn.functional as F

from evaluation.protocols.fidelity import fidelity, load_eval_images
from evaluation.records import read_record
from evaluation.report import report_settings, report_training_run
from wrc.extractor import DenseFeatureExtractor, build_extractor
from wrc.upsamplers import Upsampler, create_upsampler


class Oracle(Upsampler):
    """Cheats: runs the backbone on the larger image, so it must score cosine 1 and rel_l2 0."""

    name, needs_backbone = "oracle", True

    def upsample_to(self, features, image, size, backbone):
        large = F.interpolate(image, size=(image.shape[-2] * 2, image.shape[-1] * 2), mode="bicubic",
                              align_corners=False, antialias=True).clamp(0, 1)
        return backbone(large)


class Zero(Upsampler):
    name = "zero"

    def upsample_to(self, features, image, size, backbone):
        return features.new_zeros(features.shape[0], features.shape[1], *size)


def test_oracle_and_zero_bound_the_metrics(test_vit):
    images = load_eval_images(None, 3, 64)
    oracle = fidelity(DenseFeatureExtractor(test_vit, Oracle(64, 16)), images, scale=2, batch_size=2)
    zero = fidelity(DenseFeatureExtractor(test_vit, Zero(64, 16)), images, scale=2, batch_size=2)
    bilinear = fidelity(build_extractor(test_vit, "bilinear"), images, scale=2, batch_size=2)
    assert oracle["cosine"] == pytest.approx(1.0, abs=1e-5) and oracle["rel_l2"] == pytest.approx(0.0, abs=1e-5)
    assert zero["rel_l2"] == pytest.approx(1.0)
    assert 0 < bilinear["rel_l2"] < 1 and bilinear["cosine"] < 1


def test_the_report_writes_a_record_per_method_and_a_summary(tmp_path, test_vit):
    trained = create_upsampler("nearest", test_vit.embed_dim, test_vit.patch_size)
    out = report_training_run(tmp_path, test_vit, trained, {"num_images": 2, "image_size": 64, "figure": False})
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert set(summary["results"]) == set(out["results"]) == {"bilinear", "nearest"}
    record = read_record(tmp_path / summary["records"][1])
    assert record.protocol == "fidelity" and record.upsampler["name"] == "nearest"
    assert record.metrics["cosine"] == summary["results"]["nearest"]["cosine"]


def test_report_settings_are_checked_before_training():
    assert report_settings(None).num_images == 8
    with pytest.raises(ValueError, match=r"unknown setting evaluate.num_image \(did you mean evaluate.num_images\?\)"):
        report_settings({"num_image": 4})
    with pytest.raises(ValueError, match="evaluate.scale must be >= 1; got 0"):
        report_settings({"scale": 0})
    with pytest.raises(ValueError, match=r"evaluate.baselines: unknown upsampler\(s\) \['bilinar'\]"):
        report_settings({"baselines": ["bilinar"]})
    with pytest.raises(ValueError, match="evaluate.root='/no/such/folder' is not a folder"):
        report_settings({"root": "/no/such/folder"})
