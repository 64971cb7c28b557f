"""Linear probes end to end on fake datasets with a random-init tiny ViT, the cached path, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.probe import train_probe
from tests.conftest import REPO_ROOT
from tests.helpers.fake_datasets import save_label, save_rgb


def fake_voc(root, ids=("a", "b", "c"), values=(0, 1, 15, 255)):
    base = root / "VOCdevkit" / "VOC2012"
    for i in ids:
        save_rgb(base / "JPEGImages" / f"{i}.jpg", 40, 48)
        save_label(base / "SegmentationClass" / f"{i}.png", list(values), 40, 48, palette=True)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def probe_config(run_dir, root, **probe):
    return {
        "seed": 0, "device": "cpu", "run_dir": str(run_dir),
        "backbone": {"name": "test_vit", "weights": "random"},
        "model": {"name": "bilinear"},
        "dataset": {"name": "voc2012", "root": str(root), "train_split": "train", "val_split": "val", "size": 32},
        "probe": {"epochs": 2, "batch_size": 2, **probe},
    }


def test_segmentation_probe_end_to_end(tmp_path):
    record = train_probe(probe_config(tmp_path / "run", fake_voc(tmp_path / "voc")))
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["metrics"]["miou"] == record["metrics"]["miou"] and 0 <= record["metrics"]["miou"] <= 1
    assert len(saved["metrics"]["per_class_iou"]) == 21 and saved["dataset"] == "voc2012"
    assert (tmp_path / "run" / "probe.pt").exists() and (tmp_path / "run" / "predictions.png").exists()


def test_cached_features_reproduce_the_online_path(tmp_path):
    root = fake_voc(tmp_path / "voc")
    online = train_probe(probe_config(tmp_path / "online", root))
    cached = train_probe(probe_config(tmp_path / "cached", root, cache_features=True, cache_dtype="float32"))
    weights = [torch.load(tmp_path / name / "probe.pt")["head"]["weight"] for name in ("online", "cached")]
    torch.testing.assert_close(weights[0], weights[1])
    assert online["metrics"] == cached["metrics"]
    half = train_probe(probe_config(tmp_path / "half", root, cache_features=True))
    torch.testing.assert_close(torch.load(tmp_path / "half" / "probe.pt")["head"]["weight"], weights[0],
                               rtol=1e-2, atol=1e-3)
    assert np.load(tmp_path / "half" / "train_features.npy", mmap_mode="r").dtype == np.float16
    assert half["metrics"]["valid_pixels"] == online["metrics"]["valid_pixels"]


def test_lowres_protocol_trains_on_the_token_grid(tmp_path):
    record = train_probe(probe_config(tmp_path / "run", fake_voc(tmp_path / "voc"), protocol="lowres"))
    assert record["probe_protocol"] == "lowres" and 0 <= record["metrics"]["miou"] <= 1


def test_a_killed_probe_resumes_from_its_last_epoch(tmp_path):
    root = fake_voc(tmp_path / "voc")
    full = train_probe(probe_config(tmp_path / "full", root, epochs=3))
    cut = train_probe(probe_config(tmp_path / "cut", root, epochs=3, stop_after_epoch=1))  # as if killed
    assert cut == {"completed": False, "epoch": 1, "run_dir": str(tmp_path / "cut")}
    resumed = train_probe(probe_config(tmp_path / "cut", root, epochs=3))
    weights = [torch.load(tmp_path / name / "probe.pt")["head"]["weight"] for name in ("full", "cut")]
    torch.testing.assert_close(weights[0], weights[1])
    assert resumed["metrics"] == full["metrics"]


def test_depth_probe_end_to_end(tmp_path):
    for split in ("train", "test"):
        for i in range(2):
            save_rgb(tmp_path / "nyu" / split / "images" / f"{i:05d}.png", 40, 48)
            depth = np.random.default_rng(i).integers(500, 9000, (40, 48)).astype(np.uint16)
            (tmp_path / "nyu" / split / "depths").mkdir(parents=True, exist_ok=True)
            Image.fromarray(depth).save(tmp_path / "nyu" / split / "depths" / f"{i:05d}.png")
    config = probe_config(tmp_path / "run", tmp_path / "nyu")
    config["dataset"] = {"name": "nyuv2", "root": str(tmp_path / "nyu"), "train_split": "train",
                         "val_split": "test", "size": 32}
    metrics = train_probe(config)["metrics"]
    assert {"d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"} <= set(metrics)
    assert 0 < metrics["rmse"] < 10 and metrics["images"] == 2


def test_labels_out_of_range_are_a_clear_error(tmp_path):
    root = fake_voc(tmp_path / "voc", values=(0, 30))
    with pytest.raises(ValueError, match=r"labels out of range: expected 0..20"):
        train_probe(probe_config(tmp_path / "run", root))


def test_missing_split_and_unset_root(tmp_path):
    config = probe_config(tmp_path / "run", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="expected the layout VOCdevkit/VOC2012"):
        train_probe(config)
    config["dataset"]["root"] = None
    with pytest.raises(ValueError, match="dataset.root is not set"):
        train_probe(config)


def test_a_probe_for_another_channel_count_is_refused(tmp_path):
    root = fake_voc(tmp_path / "voc")
    train_probe(probe_config(tmp_path / "run", root, epochs=1))
    state = torch.load(tmp_path / "run" / "probe_state.pt", weights_only=False)
    state["channels"] = 999
    torch.save(state, tmp_path / "run" / "probe_state.pt")
    with pytest.raises(ValueError, match="holds a probe for 999 channels"):
        train_probe(probe_config(tmp_path / "run", root, epochs=2))


def test_hydra_sweep_over_models_runs_each_probe(tmp_path):
    root = fake_voc(tmp_path / "voc")
    command = [sys.executable, "evaluation/train_probe.py", "-m", "model=bilinear,nearest", "dataset=voc2012",
               f"dataset.root={root}", "dataset.size=32", "dataset.num_workers=0", "backbone=test_vit",
               "probe.epochs=1", "device=cpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/result.json"))
    assert [json.loads(p.read_text())["model"]["name"] for p in results] == ["bilinear", "nearest"]


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "config")):
        cfg = compose("eval/probe", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1
    assert "submitit" in cfg.hydra.launcher._target_


@pytest.mark.parametrize("option", sorted(p.stem for p in (REPO_ROOT / "config" / "dataset").glob("*.yaml")))
def test_every_dataset_option_composes_and_matches_its_loader(option):
    import inspect

    from hydra import compose, initialize_config_dir

    from evaluation.datasets import DATASETS

    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "config")):
        cfg = compose("eval/probe", overrides=[f"dataset={option}"])
    assert cfg.dataset.name == option
    accepted = set(inspect.signature(DATASETS[option]).parameters)
    extra = set(cfg.dataset) - {"name", "root", "train_split", "val_split", "num_workers"}
    assert extra <= accepted, f"config/dataset/{option}.yaml keys {extra - accepted} are not loader arguments"
