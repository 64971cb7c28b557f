"""wrc/settings.py is the one source of the training defaults; Hydra and train() both refuse bad settings."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONFIG_DIR, tiny_train_config
from tests.test_configs import compose_train
from wrc.build import build_optimizer
from wrc.data import SampleImages
from wrc.distributed import DistributedContext
from wrc.settings import RESUME_MAY_CHANGE, Logger, Optimizer, RunSettings, SettingsError, TrainLoop, config_changes
from wrc.training import available_cpus, grad_scaler, loader_workers, make_loader, train

TOP_LEVEL_DEFAULTS = ("seed", "device", "precision", "resume", "resume_allow_changes")


def test_the_composed_config_takes_every_default_from_the_dataclasses():
    cfg = compose_train()
    assert cfg["train"] == TrainLoop().to_dict()
    assert cfg["logger"] == Logger().to_dict()
    assert cfg["optimizer"] == json.loads(json.dumps(Optimizer().to_dict()))  # betas: a list in both
    defaults = RunSettings().to_dict()
    assert {k: cfg[k] for k in TOP_LEVEL_DEFAULTS} == {k: defaults[k] for k in TOP_LEVEL_DEFAULTS}


def test_the_yaml_files_restate_no_default():
    """They agree with the dataclasses because they hold no copy to drift."""
    train_yaml = yaml.safe_load((CONFIG_DIR / "train.yaml").read_text())
    assert not set(train_yaml) & {*TOP_LEVEL_DEFAULTS, "train", "logger", "optimizer"}
    assert "run_settings" in train_yaml["defaults"]
    assert yaml.safe_load((CONFIG_DIR / "optimizer" / "adamw.yaml").read_text()) == {
        "defaults": ["/optimizer_settings@_here_"]
    }


def test_overrides_reach_the_dataclass_fields():
    cfg = compose_train("optimizer.lr=3e-4", "train.max_steps=10", "logger.tensorboard=true", "resume=/runs/a")
    assert cfg["optimizer"]["lr"] == 3e-4 and cfg["train"]["max_steps"] == 10 and cfg["logger"]["tensorboard"]
    assert cfg["resume"] == "/runs/a" and cfg["optimizer"]["warmup_steps"] == Optimizer.warmup_steps


@pytest.mark.parametrize(("override", "named"), [
    ("train.max_stepz=1", "max_stepz"), ("optimizer.lrr=1", "lrr"), ("logger.wandbb=true", "wandbb"),
    ("resume_allow_change=true", "resume_allow_change"),
    ("train.max_steps=ten", "'ten' of type 'str' could not be converted to Integer"),
    ("seed=1.5", "'1.5' of type 'float' could not be converted to Integer"),
])
def test_hydra_refuses_misspelt_and_mistyped_overrides(override, named):
    with pytest.raises(Exception) as err:
        compose_train(override)
    assert named in f"{err.value} {err.value.__cause__}"


def test_hydra_and_hand_built_configs_are_valid(tmp_path):
    from benchmarks.quickstart import QUICKSTART
    from evaluation.synthetic.benchmark import training_config

    for config in (compose_train(), compose_train("experiment=quickstart"), tiny_train_config(tmp_path),
                   {**QUICKSTART, "run_dir": str(tmp_path)},
                   training_config({"name": "lift"}, {"name": "lift_multiscale"}, steps=10, image_size=64,
                                   batch_size=2, lr=1e-3, seed=0, device="cpu", run_dir=tmp_path)):
        settings = RunSettings.from_mapping(config)
        assert settings.train.max_steps == config["train"]["max_steps"]


@pytest.mark.parametrize(("section", "key", "valid"), [
    (None, "sed", "seed"), ("train", "max_stepz", "max_steps"), ("logger", "tensorbord", "tensorboard"),
    ("optimizer", "lrr", "lr"),
])
def test_train_refuses_unknown_keys_naming_the_valid_ones(tmp_path, section, key, valid):
    config = tiny_train_config(tmp_path / "run")
    (config[section] if section else config)[key] = 1
    where = f"{section}." if section else ""
    with pytest.raises(SettingsError, match=rf"unknown setting {where}{key} \(did you mean {where}{valid}\?\)") as err:
        train(config)
    kind = {None: RunSettings, "train": TrainLoop, "logger": Logger, "optimizer": Optimizer}[section]
    assert ", ".join(sorted(f.name for f in dataclasses.fields(kind))) in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("train", "max_steps", 0, "an integer >= 1"),
    ("train", "max_steps", -5, "an integer >= 1"),
    ("train", "max_steps", "ten", "an integer"),
    ("train", "log_every", 0, "an integer >= 1"),
    ("train", "ckpt_every", -1, "an integer >= 1"),
    ("train", "keep_checkpoints", 0, "an integer >= 1"),
    ("train", "grad_clip", -1.0, "a number >= 0"),
    ("optimizer", "warmup_steps", -1, "an integer >= 0"),
    ("optimizer", "lr", 0.0, "positive"),
    ("optimizer", "lr", -1e-3, "positive"),
    ("optimizer", "scheduler", "linear", "'cosine' or 'constant'"),
    ("data", "batch_size", 0, "an integer >= 1"),
    ("data", "batch_size", -2, "an integer >= 1"),
    ("data", "num_workers", -1, "an integer >= 0, or null"),
    (None, "precision", "fp8", "one of fp32, bf16, fp16"),
    (None, "resume_allow_changes", "yes", "true or false"),
])
def test_bad_values_fail_at_start_naming_the_key(tmp_path, section, key, value, expected):
    config = tiny_train_config(tmp_path / "run")
    (config[section] if section else config)[key] = value
    name = f"{section}.{key}" if section else key
    with pytest.raises(SettingsError, match=re.escape(f"{name} must be {expected}")) as err:
        train(config)
    assert str(err.value).endswith(f"; got {value!r}")
    assert not (tmp_path / "run").exists()


def test_build_optimizer_takes_the_same_defaults_and_checks():
    import torch

    optimizer, _ = build_optimizer([torch.nn.Parameter(torch.zeros(2))], {"lr": 2e-3}, max_steps=10)
    assert optimizer.param_groups[0]["weight_decay"] == Optimizer.weight_decay
    with pytest.raises(SettingsError, match="optimizer.warmup_steps must be"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], {"warmup_steps": -1}, max_steps=10)


def test_fp16_on_the_cpu_scales_the_loss():
    import torch

    assert grad_scaler("fp16", torch.device("cpu")).is_enabled()
    assert not grad_scaler("bf16", torch.device("cpu")).is_enabled()
    assert not grad_scaler("fp32", torch.device("cpu")).is_enabled()


def test_num_workers_defaults_to_the_cores_available(monkeypatch):
    assert compose_train()["data"]["num_workers"] is None  # image_folder, the default data group
    assert available_cpus() == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(None) == 4 and loader_workers(0) == 0 and loader_workers(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: the node's cores are shared by its processes
    assert loader_workers(None) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_workers(None) == 1
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert loader_workers(None) == 6


def test_make_loader_resolves_null_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    config = {"seed": 0, "data": {"batch_size": 2, "num_workers": None}}
    loader = make_loader(config, SampleImages(4, 32), DistributedContext(), start_step=0)
    assert loader.num_workers == 3  # not started: the test spawns no process


def test_config_changes_lists_what_shapes_the_losses():
    old = RunSettings.from_mapping(tiny_train_config(Path("/runs/a"))).to_dict()
    new = tiny_train_config(Path("/runs/b"), resume=True, name="other", device="cuda",
                            train={"max_steps": 40, "log_every": 5, "ckpt_every": 10, "keep_checkpoints": 1},
                            logger={"tensorboard": True}, evaluate={"enabled": True},
                            data={"num_workers": None})
    assert config_changes(old, new) == {}  # where it writes and logs, how far it goes, the cores it uses
    new = tiny_train_config(Path("/runs/a"), seed=1, optimizer={"lr": 3e-4}, data={"batch_size": 4},
                            model={"name": "lift", "image_channels": 8, "extra": 1})
    new["optimizer"].pop("warmup_steps")  # the default (500) differs from the run's 2
    assert config_changes(old, new) == {
        "seed": (0, 1), "optimizer.lr": (1e-3, 3e-4), "optimizer.warmup_steps": (2, 500),
        "data.batch_size": (2, 4), "model.extra": ("(absent)", 1),
    }
    assert config_changes(tiny_train_config(Path("/runs/a")), old) == {}  # an unfilled config.json compares too
    assert "train.max_steps" in RESUME_MAY_CHANGE
    stage2 = tiny_train_config(Path("/runs/a"), objective={"name": "loftup_stage2", "init_from": "outputs/stage1"})
    moved = tiny_train_config(Path("/runs/a"), objective={"name": "loftup_stage2", "init_from": "/abs/outputs/stage1"})
    assert config_changes(stage2, moved) == {}  # init_from is read by a fresh run only (wrc.objectives.loftup_stages)

