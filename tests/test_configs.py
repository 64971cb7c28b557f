"""Every option of every config group composes and builds (lightning-hydra-template style)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from hydra_plugins.wrc_resolvers import strip_tag
from tests.conftest import CONFIG_DIR, REPO_ROOT
from train_wrc import register_configs
from wrc.build import build_backbone, build_objective, build_optimizer, build_upsampler
from wrc.data import build_dataset


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def compose_train(*overrides: str) -> dict:
    """config/train.yaml composed as train_wrc.py composes it (wrc.settings' dataclasses in the ConfigStore)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["run_dir=/tmp/unused", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="module")
def small_backbone():
    return build_backbone({"name": "test_vit", "weights": "random"})


@pytest.mark.parametrize("option", options("backbone"))
def test_backbone_options(option):
    cfg = compose_train(f"backbone={option}", "backbone.weights=random")
    backbone = build_backbone(cfg["backbone"])
    assert backbone.embed_dim > 0 and backbone.patch_size in (8, 14, 16)
    assert cfg["name"] == f"lift_{strip_tag(cfg['backbone']['name'])}"


@pytest.mark.parametrize("option", options("model"))
def test_model_options(option, small_backbone):
    cfg = compose_train(f"model={option}")
    upsampler = build_upsampler(cfg["model"], small_backbone)
    assert upsampler.name == cfg["model"]["name"] == option


@pytest.mark.parametrize("option", options("objective"))
def test_objective_options(option):
    assert build_objective(compose_train(f"objective={option}")["objective"]).name == option


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_options(option, small_backbone):
    cfg = compose_train(f"optimizer={option}")
    upsampler = build_upsampler(cfg["model"], small_backbone)
    optimizer, scheduler = build_optimizer(upsampler.parameters(), cfg["optimizer"], cfg["train"]["max_steps"])
    assert optimizer.param_groups[0]["lr"] > 0


@pytest.mark.parametrize("option", options("data"))
def test_data_options(option, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    cfg = compose_train(f"data={option}", f"data.root={tmp_path}" if option == "image_folder" else "data.num_images=2")
    dataset = build_dataset(cfg["data"])
    assert dataset[0]["image"].shape[-1] == cfg["data"]["image_size"]


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_options(option):
    cfg = compose_train(f"experiment={option}")
    assert cfg["train"]["max_steps"] > 0 and cfg["evaluate"]["enabled"]


def test_quickstart_needs_no_download():
    cfg = compose_train("experiment=quickstart")
    assert cfg["backbone"]["weights"] == "random" and cfg["data"]["name"] == "samples"


def test_the_issue_command_line_composes():
    cfg = compose_train("model=lift", "backbone.name=vit_small_patch14_dinov2.lvd142m", "data.root=/data/train",
                        "optimizer.lr=1e-3", "data.batch_size=64")
    assert cfg["data"]["root"] == "/data/train" and cfg["data"]["batch_size"] == 64
    assert cfg["backbone"]["weights"] == "pretrained"


def test_unknown_key_is_rejected():
    with pytest.raises(Exception, match="max_step"):
        compose_train("train.max_step=3")


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "train_wrc.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_lists_groups_and_config():
    out = _cli("--help")
    for group in ("backbone", "model", "objective", "data", "optimizer", "experiment"):
        assert f"{group}:" in out
    assert "quickstart" in out and "max_steps" in out


def test_cfg_job_prints_a_readable_config():
    out = _cli("experiment=quickstart", "--cfg", "job")
    cfg = OmegaConf.create(out)
    assert cfg.model.name == "wrc" and cfg.backbone.name == "test_vit" and cfg.train.max_steps == 300


def test_resolvers_are_discovered_by_hydra_without_explicit_registration(tmp_path):
    """Hydra imports hydra_plugins/* at start-up, so a bare compose resolves ${wrc.strip_tag:...}. (Importing
    train_wrc stores wrc.settings' dataclasses in the ConfigStore, which train.yaml needs; it registers no
    resolver: train_wrc does that only when run.)"""
    script = (
        "import train_wrc\n"
        "from hydra import compose, initialize_config_dir\n"
        "from omegaconf import OmegaConf\n"
        f"with initialize_config_dir(version_base='1.3', config_dir={str(CONFIG_DIR)!r}):\n"
        "    cfg = compose('train', overrides=['run_dir=x', 'backbone=dino_vits16'])\n"
        "print(cfg.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "lift_vit_small_patch16_224"
