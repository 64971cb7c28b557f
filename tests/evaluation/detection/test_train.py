"""The detector's training loop: ViTDet's optimiser groups and schedule by hand, a CI-sized run on generated scenes
whose loss falls and whose evaluation runs, exact resume after a kill, refused resumes, the Hydra config."""

from __future__ import annotations

import json
import shutil

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from evaluation.detection import checkpoint as ckpt
from evaluation.detection.coco import CategoryMap, metric_names
from evaluation.detection.settings import DetectionOptimizer, DetectionRun, DetectorModel
from evaluation.detection.train import lr_factor, make_detector, param_groups, train_detector
from tests.conftest import CONFIG_DIR, REPO_ROOT
from tests.helpers.ddp import assert_ranks_hold_the_same_parameters, run_two_ranks
from wrc.run_logger import read_metrics
from wrc.settings import SettingsError
from wrc.training import ResumeConfigError

TINY_MODEL = {"out_channels": 16, "representation_size": 32, "rois_per_image": 16, "proposals_per_image": 32,
              "anchor_sizes": [8, 16, 32, 64, 128]}


def tiny_config(run_dir, **sections) -> dict:
    config = {
        "device": "cpu", "run_dir": str(run_dir),
        "data": {"dataset": "synthetic", "root": str(run_dir.parent / "scenes"), "image_size": 64,
                 "scale_range": [0.9, 1.1], "batch_size": 2, "num_workers": 0, "synthetic_train_images": 8,
                 "synthetic_val_images": 2, "synthetic_size": 64},
        "model": {"pyramid": "bilinear", "freeze": "backbone", **TINY_MODEL},
        "optimizer": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"max_steps": 6, "log_every": 1, "ckpt_every": 3, "evaluate": False},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def test_layer_decay_and_no_weight_decay_groups(test_vit):
    """test_vit has 6 blocks: patch embedding lr x 0.7^7, block i x 0.7^(6 - i), the final norm and the heads x 1;
    norms and the position embedding without weight decay."""
    import copy

    detector = make_detector(DetectorModel.from_mapping({"freeze": "none", **TINY_MODEL}), copy.deepcopy(test_vit),
                             CategoryMap((1,)), 64)
    settings = DetectionOptimizer()
    groups = param_groups(detector, settings)
    where = {id(p): g for g in groups for p in g["params"]}
    params = dict(detector.named_parameters())
    vit = "backbone.vit.model."
    assert where[id(params[vit + "patch_embed.proj.weight"])]["lr_scale"] == pytest.approx(0.7**7)
    assert where[id(params[vit + "blocks.0.mlp.fc1.weight"])]["lr_scale"] == pytest.approx(0.7**6)
    assert where[id(params[vit + "blocks.5.mlp.fc1.weight"])]["lr_scale"] == pytest.approx(0.7)
    assert where[id(params[vit + "norm.weight"])]["lr_scale"] == 1.0
    assert where[id(params["roi_heads.box_predictor.cls_score.weight"])]["lr_scale"] == 1.0
    for name, decay in ((vit + "pos_embed", 0.0), (vit + "blocks.0.norm1.weight", 0.0),
                        ("backbone.pyramid.lateral.0.1.weight", 0.0), (vit + "blocks.0.mlp.fc1.weight", 0.1),
                        ("roi_heads.box_head.5.weight", 0.1)):
        assert where[id(params[name])]["weight_decay"] == decay, name
    assert where[id(params[vit + "blocks.0.mlp.fc1.weight"])]["lr"] == pytest.approx(1e-4 * 0.7**6)


def test_schedule_is_warm_up_then_steps():
    settings = DetectionOptimizer(warmup_steps=10, warmup_factor=0.001, lr_steps=(0.5, 0.75), gamma=0.1)
    assert lr_factor(0, 100, settings) == pytest.approx(0.001)
    assert lr_factor(5, 100, settings) == pytest.approx(0.001 * 0.5 + 0.5)
    assert [lr_factor(s, 100, settings) for s in (10, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_a_short_run_learns_and_evaluates(tmp_path):
    """Generated scenes on the oracle: the loss falls over 12 steps; the val split is scored with every AP key."""
    result = train_detector(tiny_config(tmp_path / "run", train={"max_steps": 12, "ckpt_every": 12,
                                                                  "evaluate": True}))
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    assert set(result.metrics) == set(metric_names())
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["metrics"] == result.metrics and (tmp_path / "run" / "predictions_segm.json").is_file()
    meta = ckpt.read_meta(tmp_path / "run")
    assert meta["categories"]["ids"] == [1, 2, 3] and meta["upsampler"]["name"] == "bilinear"
    assert not meta["saved"]["vit"] and "backbone.vit." not in " ".join(ckpt.read_weights(tmp_path / "run"))


def test_a_killed_run_resumes_with_identical_losses(tmp_path):
    whole = train_detector(tiny_config(tmp_path / "whole"))
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "whole", killed)  # as if killed after step 5: step 3 is the last checkpoint
    shutil.rmtree(killed / "checkpoints" / "step_0000006")
    (killed / "checkpoints" / "LATEST").write_text("step_0000003\n")
    resumed = train_detector(tiny_config(killed, resume=True))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    assert [r["step"] for r in read_metrics(killed)] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_changes_and_a_second_fresh_run(tmp_path):
    train_detector(tiny_config(tmp_path / "run", train={"max_steps": 1, "ckpt_every": 1}))
    with pytest.raises(ResumeConfigError, match="optimizer.lr: 0.001 -> 0.01"):
        train_detector(tiny_config(tmp_path / "run", resume=True, optimizer={"lr": 1e-2}))
    with pytest.raises(FileExistsError, match="already holds the checkpoints"):
        train_detector(tiny_config(tmp_path / "run", train={"max_steps": 1}))


def test_bad_settings_name_the_key():
    with pytest.raises(SettingsError, match="data.root is not set"):
        DetectionRun.from_mapping({})
    with pytest.raises(SettingsError, match="model.freeze must be one of"):
        DetectionRun.from_mapping({"data": {"dataset": "synthetic"}, "model": {"freeze": "heads"}})
    with pytest.raises(SettingsError, match="unknown setting model.pyramd"):
        DetectionRun.from_mapping({"data": {"dataset": "synthetic"}, "model": {"pyramd": "lift"}})


def test_hydra_config_composes_from_the_dataclasses():
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="detection_run_settings", node=DetectionRun)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR / "detection")):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{CONFIG_DIR}]", "backbone=test_vit",
                                          "preset=synthetic", "run_dir=/tmp/x"])
    settings = DetectionRun.from_mapping(OmegaConf.to_container(cfg))
    assert settings.backbone["name"] == "test_vit" and settings.data.dataset == "synthetic"
    assert settings.optimizer == DetectionOptimizer(lr=2e-4, warmup_steps=50)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR / "detection")):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{CONFIG_DIR}]", "data.root=/data/coco",
                                          "run_dir=/tmp/x"])
    defaults = DetectionRun.from_mapping(OmegaConf.to_container(cfg))
    assert defaults.train.max_steps == 184_375 and defaults.data.scale_range == (0.1, 2.0)
    assert defaults.model == DetectorModel() and defaults.optimizer == DetectionOptimizer()


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_one_detector(tmp_path):
    """torchrun with two CPU processes (gloo): the ranks end with the same weights, rank 0 alone logs and saves."""
    config = tiny_config(tmp_path / "run", train={"max_steps": 2, "ckpt_every": 2})
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(config))
    run_two_ranks(REPO_ROOT / "tests" / "helpers" / "train_detector_from_json.py", path, tmp_path / "states", 600)
    assert_ranks_hold_the_same_parameters(tmp_path / "states")
    assert [h["step"] for h in read_metrics(tmp_path / "run")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")) == ["step_0000002"]


def test_tensorboard_logging_as_in_training(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    train_detector(tiny_config(tmp_path / "run", train={"max_steps": 1, "ckpt_every": 1},
                               logger={"tensorboard": True}))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
