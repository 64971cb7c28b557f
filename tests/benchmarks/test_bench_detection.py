"""benchmarks.bench_detection at a tiny size: its inputs, that the mask head really runs in the timed inference,
the ratios to tconv from hand-made rows, and a whole run writing its result with the command as typed."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_detection, common
from evaluation.detection.coco import masks_to_boxes

TINY = ["--device", "cpu", "--backbone", "test_vit", "--size", "64", "--proposals", "16", "--detections", "8",
        "--channels", "16"]


def test_random_targets_are_boxes_with_their_own_masks():
    targets = bench_detection.random_targets(2, 64, torch.device("cpu"))
    for target in targets:
        assert target["boxes"].shape == (bench_detection.BOXES_PER_IMAGE, 4)
        assert torch.equal(masks_to_boxes(target["masks"]), target["boxes"])  # each mask fills exactly its box
        assert int(target["labels"].min()) >= 1 and int(target["labels"].max()) <= 80


def spec(mode: str, variant: str = "bilinear") -> dict:
    return {"variant": variant, "backbone": "test_vit", "size": 64, "batch": 1, "proposals": 16, "detections": 8,
            "channels": 16, "precision": "fp32", "mode": mode}


def test_inference_carries_every_detection_through_the_mask_head():
    """Random heads score below torchvision's 0.05: with the threshold at 0 the timed call still masks all 8."""
    (output,) = bench_detection.step_fn(spec("infer"), torch.device("cpu"))()
    assert output["boxes"].shape == (8, 4) and output["masks"].shape == (8, 1, 64, 64)


def test_the_training_step_is_lift_step_3():
    """One step moves the heads and the pyramid's projections, never the ViT or the upsampler."""
    cpu = torch.device("cpu")
    detector = bench_detection.build("lift", "test_vit", 64, 16, 8, 16, cpu, train=True)
    before = {k: v.clone() for k, v in detector.state_dict().items() if v.is_floating_point()}
    bench_detection.make_step(detector, spec("train", "lift"), cpu)()
    moved = {k for k, v in detector.state_dict().items() if k in before and not torch.equal(v, before[k])}
    assert not {k for k in moved if k.startswith(("backbone.vit.", "backbone.pyramid.upsampler."))}
    assert any(k.startswith("rpn.") for k in moved) and any(k.startswith("roi_heads.mask_head") for k in moved)
    assert any(k.startswith("backbone.pyramid.lateral.") for k in moved)


def test_ratios_are_to_the_tconv_row():
    rows = [{"variant": "tconv", "infer_ms": 20.0, "infer_peak_mib": 100.0},
            {"variant": "wrc", "infer_ms": 30.0, "infer_peak_mib": 250.0}]
    bench_detection.add_ratios(rows)
    assert rows[0]["infer_time_vs_tconv"] == 1.0
    assert rows[1]["infer_time_vs_tconv"] == pytest.approx(1.5)
    assert rows[1]["infer_memory_vs_tconv"] == pytest.approx(2.5)


def test_bad_sizes_name_the_flag():
    with pytest.raises(SystemExit):
        bench_detection.parse_args(["--size", "100"])
    assert bench_detection.parse_args(["--device", "cpu"]).size == 512
    assert bench_detection.parse_args(["--device", "cuda"]).size == 1024


def test_a_tiny_run_writes_its_result(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    bench_detection.main([*TINY, "--variants", "tconv", "bilinear", "--repeat", "1", "--warmup", "0", "--no-train",
                          "--memory-in-process"])
    record = json.loads((tmp_path / "detection_cpu.json").read_text())
    rows = {r["variant"]: r for r in record["results"]}
    assert set(rows) == {"tconv", "bilinear"} and rows["tconv"]["infer_time_vs_tconv"] == 1.0
    assert all(r["infer_images_per_s"] > 0 and "train_ms" not in r for r in rows.values())
    assert record["setting"]["size"] == 64
    assert "| bilinear |" in (tmp_path / "detection_cpu.md").read_text()
