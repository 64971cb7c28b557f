"""benchmarks/lift_regime.py: its pieces against hand-computed cases and the synthetic protocol's own code, and one
end-to-end run of the script on a tiny LiFT trained for two steps."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import common
from benchmarks import lift_regime as regime
from evaluation.protocol import get_protocol
from evaluation.protocols.synthetic import SyntheticSettings
from evaluation.synthetic.oracle import OracleBackbone
from wrc import create_upsampler
from wrc.extractor import DenseFeatureExtractor


def test_match_norm_rescales_each_pixel_and_keeps_its_direction():
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)  # norm 5
    reference = torch.tensor([0.0, 10.0]).view(1, 2, 1, 1)  # norm 10
    assert torch.allclose(regime.match_norm(x, reference).flatten(), torch.tensor([6.0, 8.0]))


def test_best_scale_is_the_projection_onto_each_pixel():
    x = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    target = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)  # projection of the target on x: (3, 0), error 4 of 5
    assert torch.allclose(regime.best_scale(x, target).flatten(), torch.tensor([3.0, 0.0]))
    assert regime.rel_l2(regime.best_scale(x, target), target).item() == pytest.approx(0.8)


def test_training_minutes_sums_each_logged_interval(tmp_path):
    run = tmp_path / "lift"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"batch_size": 8}}))
    rows = [{"step": 10, "images_per_s": 8.0}, {"step": 20, "images_per_s": 4.0}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert regime.training_minutes(tmp_path) == {"lift": pytest.approx((10 * 8 / 8 + 10 * 8 / 4) / 60)}


def test_lift_use_caps_the_chained_steps_then_interpolates():
    torch.manual_seed(0)
    lift = create_upsampler("lift", 8, 8).eval()
    tokens, image = torch.randn(1, 8, 4, 4), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        once = regime.LiftUse(lift, 1)(tokens, image, (32, 32))
        expected = torch.nn.functional.interpolate(lift.upsample_step(tokens, image), size=(32, 32), mode="bilinear",
                                                   align_corners=False)
        assert torch.allclose(once, expected, atol=1e-6)
        calibrated = regime.LiftUse(lift, 1, calibrate=True)(tokens, image, (8, 8))
        bilinear = torch.nn.functional.interpolate(tokens, size=(8, 8), mode="bilinear", align_corners=False)
        assert torch.allclose(calibrated.norm(dim=1), bilinear.norm(dim=1), rtol=1e-5)


def test_script_end_to_end_on_a_two_step_lift(tmp_path, monkeypatch):
    """A tiny run writes both files; its chain's last grid agrees with the protocol scoring the same use."""
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    work = tmp_path / "work"
    assert regime.main(["--train-steps", "2", "--work-dir", str(work), "--image-size", "64", "--train-scenes", "4",
                        "--batch-size", "2",
                        "--test-scenes", "2", "--probe-scenes", "2", "--implicit-steps", "1", "--implicit-views", "2",
                        "--cost-dir", str(tmp_path / "none"), "--name", "lift_regime"]) == 0
    record = json.loads((tmp_path / "results" / "lift_regime.json").read_text())
    assert (tmp_path / "results" / "lift_regime.md").read_text().startswith("# lift_regime\n\n- device:")
    (result,) = record["results"]
    chained, bilinear_8x = result["chain"][-1]["lift"], result["chain"][-1]["bilinear"]
    three_steps = result["protocol"]["3 steps (benchmark row)"]
    assert chained["cosine"] == pytest.approx(three_steps["cosine"], abs=1e-5)
    assert chained["rel_l2"] == pytest.approx(three_steps["rel_l2"], rel=1e-5)
    best = chained["rel_l2_best_scale"]  # the least rel_l2 any per-pixel rescale reaches
    assert best <= chained["rel_l2"] + 1e-6 and best <= chained["rel_l2_bilinear_norm"] + 1e-6
    # the chain's bilinear column against the synthetic protocol scoring bilinear itself
    oracle = OracleBackbone()
    settings = SyntheticSettings(image_size=64, test_scenes=2, probe_scenes=2)
    metrics = get_protocol("synthetic").run(DenseFeatureExtractor(oracle, create_upsampler("bilinear", 32, 8)),
                                            settings, tmp_path).metrics
    assert bilinear_8x["cosine"] == pytest.approx(metrics["cosine"], abs=1e-5)
    assert record["bilinear"]["rel_l2"] == pytest.approx(metrics["rel_l2"], rel=1e-5)
    assert [row["stage"] for row in result["batchnorm"]][:2] == ["train pair x/2 -> x", "train pair x/4 -> x/2"]
    assert record["featup_implicit"]["cpu_seconds_per_step"] > 0
