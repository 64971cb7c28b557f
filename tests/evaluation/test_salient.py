"""The salient protocol end to end on a fake ECSSD (tiny test ViT, bilinear), its resize and resolution, the
bilateral-solver option's wiring, resume, and the synthetic task on the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.protocol import evaluate, get_protocol
from evaluation.protocols import salient
from evaluation.protocols.synthetic import GroundTruth
from evaluation.synthetic.oracle import OracleBackbone
from tests.evaluation.test_object_discovery import BrightnessBackbone
from tests.evaluation.test_tokencut import fake_ecssd, save_image
from wrc.extractor import DenseFeatureExtractor, build_extractor
from wrc.settings import SettingsError


def fake_settings_salient(tmp_path) -> dict:
    """G's fake ECSSD: one 48 x 64 image with a 0/255 rectangle as its ground truth."""
    return {"dataset": "ecssd", "root": str(fake_ecssd(tmp_path / "datasets"))}


fake_settings = fake_settings_salient


def predictions(run_dir) -> dict:
    return json.loads((run_dir / "predictions.json").read_text())["images"]


def test_end_to_end_on_the_fake_ecssd(tmp_path, test_vit):
    record = evaluate("salient", build_extractor(test_vit, "bilinear"), fake_settings_salient(tmp_path),
                      tmp_path / "run")
    assert record.dataset["name"] == "ecssd" and record.metrics["images"] == 1.0
    for metric in ("max_f", "iou", "accuracy"):
        assert 0 <= record.metrics[metric] <= 1
    assert "iou_binary" not in record.metrics and record.resolution["tau"] == 0.2
    (result,) = predictions(tmp_path / "run").values()
    assert result["size"] == [48, 64] and result["grid"] == [6, 8] and len(result["f"]) == 255


def test_a_clear_object_is_segmented_at_the_original_resolution(tmp_path):
    root = fake_ecssd(tmp_path, height=50, width=70)  # LANCZOS to 72 x 48 (multiples of 8), scored at 70 x 50
    record = evaluate("salient", build_extractor(BrightnessBackbone(patch_size=8), "bilinear"),
                      {"dataset": "ecssd", "root": str(root)}, tmp_path / "run")
    (result,) = predictions(tmp_path / "run").values()
    assert result["size"] == [50, 70] and result["grid"] == [12, 18]
    assert record.metrics["iou"] >= 0.6 and record.metrics["accuracy"] >= 0.85 and record.metrics["max_f"] >= 0.7
    assert record.metrics["max_f"] == pytest.approx(max(result["f"]), abs=1e-6)  # a binary mask: one F at all t


def test_a_ground_truth_of_another_size_is_an_error(tmp_path, test_vit):
    root = fake_ecssd(tmp_path)
    save_image(root / "ECSSD" / "img" / "0001.jpg", height=40, width=64)
    with pytest.raises(ValueError, match=r"gt/0001.png: the ground truth is 64x48 pixels but its image .* is 64x40"):
        evaluate("salient", build_extractor(test_vit, "bilinear"), {"dataset": "ecssd", "root": str(root)},
                 tmp_path / "run")


def test_the_bilateral_solver_option_scores_its_soft_map(tmp_path, monkeypatch):
    calls = []

    def fake_refine(reference, mask):
        calls.append((reference, mask))
        soft = 0.2 + 0.6 * mask  # 0.2 outside, 0.8 inside the mask
        soft[10, 10] = 1.5  # inside the object, out of [0, 1]
        return soft, np.zeros(mask.shape, dtype=bool)  # an empty binary map: iou_binary 0

    monkeypatch.setattr(salient, "refine_mask", fake_refine)
    settings = {"dataset": "ecssd", "root": str(fake_ecssd(tmp_path))}
    extractor = build_extractor(BrightnessBackbone(patch_size=8), "bilinear")
    plain = evaluate("salient", extractor, settings, tmp_path / "plain")
    refined = evaluate("salient", extractor, {**settings, "refine": "bilateral_solver"}, tmp_path / "bs")
    ((reference, mask),) = calls
    assert reference.dtype == np.uint8 and reference.shape == (48, 64, 3)  # the original image
    assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0.0, 1.0}
    (soft,) = predictions(tmp_path / "bs").values()
    # the soft map thresholded anywhere in [0.2, 0.8) is the plain mask; below 0.2 everything is predicted; the
    # 1.5 pixel is clipped to 1 (it would otherwise be refused as a prediction outside [0, 1])
    f = np.array(soft["f"])
    assert f[52] == pytest.approx(plain.metrics["max_f"], abs=1e-6) and f[0] < f[52]
    assert refined.metrics["iou"] == plain.metrics["iou"] and refined.metrics["iou_binary"] == 0.0


def test_the_real_bilateral_solver_runs_in_the_protocol(tmp_path):
    settings = {"dataset": "ecssd", "root": str(fake_ecssd(tmp_path)), "refine": "bilateral_solver"}
    record = evaluate("salient", build_extractor(BrightnessBackbone(patch_size=8), "bilinear"), settings,
                      tmp_path / "run")
    assert record.metrics["iou"] >= 0.6 and 0 <= record.metrics["iou_binary"] <= 1


def test_stop_after_and_resume(tmp_path, test_vit):
    settings = {"dataset": "ecssd", "root": str(fake_ecssd(tmp_path, ("0001", "0002"))), "stop_after": 1}
    extractor = build_extractor(test_vit, "bilinear")
    assert evaluate("salient", extractor, settings, tmp_path / "run") is None
    assert list(predictions(tmp_path / "run")) == ["0001"]
    assert evaluate("salient", extractor, settings, tmp_path / "run").metrics["images"] == 2.0
    with pytest.raises(ValueError, match=r"another run \(settings.upsample_factor: 2 -> 1\)"):
        evaluate("salient", extractor, {**settings, "upsample_factor": 1}, tmp_path / "run")


def test_bad_settings_are_refused():
    protocol = get_protocol("salient")
    with pytest.raises(SettingsError, match="protocol.refine='crf'; expected one of"):
        protocol.settings({"refine": "crf"})
    with pytest.raises(SettingsError, match="protocol.dataset='duts'; expected one of"):
        protocol.settings({"dataset": "duts"})


def test_synthetic_task_on_the_oracle(tmp_path):
    protocol = get_protocol("salient")
    settings = protocol.settings({"dataset": "synthetic", "synthetic_images": 1})
    oracle = protocol.make_backbone(settings)
    assert isinstance(oracle, OracleBackbone)
    truth = DenseFeatureExtractor(oracle, GroundTruth(oracle.embed_dim, oracle.patch_size)).eval()
    record = evaluate(protocol, truth, settings, tmp_path / "run")
    assert record.metrics["max_f"] >= 0.85 and record.metrics["iou"] >= 0.8
    assert record.dataset["name"] == "synthetic_objects"
    assert (tmp_path / "run" / "synthetic_data" / "ECSSD" / "gt").is_dir()
    assert record.resolution["grid_first_image"] == [44, 60]  # 240 x 180 -> LANCZOS 240 x 176 -> 30 x 22 tokens
