from __future__ import annotations

import json

import pytest
import torch.nn.functional as F

from evaluation.eval_fidelity import fidelity, load_eval_images, main
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
    results = fidelity(test_vit, {"oracle": Oracle(64, 16), "zero": Zero(64, 16),
                                  "bilinear": create_upsampler("bilinear", 64, 16)}, images, scale=2, batch_size=2)
    assert results["oracle"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert results["oracle"]["rel_l2"] == pytest.approx(0.0, abs=1e-5)
    assert results["zero"]["rel_l2"] == pytest.approx(1.0)
    assert 0 < results["bilinear"]["rel_l2"] < 1 and results["bilinear"]["cosine"] < 1


def test_cli_writes_one_json(tmp_path):
    out = tmp_path / "fid.json"
    assert main(["--backbone", "test_vit", "--weights", "random", "--models", "bilinear", "nearest",
                 "--num-images", "2", "--image-size", "64", "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["protocol"] == "fidelity" and set(record["results"]) == {"bilinear", "nearest"}
    assert record["backbone"]["name"] == "test_vit" and record["num_images"] == 2


def test_checkpoint_for_another_backbone_is_refused(tmp_path):
    from wrc.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "step_0000001", create_upsampler("lift", 384, 16), {"backbone": {"name": "vit_s"}})
    with pytest.raises(ValueError, match="trained on 384-channel features .* test_vit has 64"):
        main(["--backbone", "test_vit", "--weights", "random", "--models", str(tmp_path), "--num-images", "1",
              "--image-size", "32", "--device", "cpu", "--out", str(tmp_path / "x.json")])
