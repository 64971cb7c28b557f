"""Shared fixtures: a tiny random-init timm ViT, generated images, Hydra compose helpers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download weights (read by huggingface_hub at import)

from pathlib import Path

import pytest
import torch

from hydra_plugins.wrc_resolvers import register_resolvers
from wrc import FrozenBackbone

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "config"

register_resolvers()
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def test_vit() -> FrozenBackbone:
    """timm's tiny ViT (64 channels, patch 16), random weights."""
    return FrozenBackbone("test_vit", "random")


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def tiny_train_config(run_dir: Path, **overrides) -> dict:
    """A complete training config (as train_wrc.py passes it) small enough for a unit test."""
    config = {
        "seed": 0, "device": "cpu", "precision": "fp32", "run_dir": str(run_dir), "resume": False,
        "backbone": {"name": "test_vit", "weights": "random"},
        "model": {"name": "lift", "image_channels": 8},
        "objective": {"name": "lift_multiscale", "jitter": {}},
        "data": {"name": "samples", "num_images": 8, "image_size": 64, "batch_size": 2, "num_workers": 0},
        "optimizer": {"name": "adamw", "lr": 1e-3, "warmup_steps": 2},
        "train": {"max_steps": 4, "log_every": 1, "ckpt_every": 2, "keep_checkpoints": 2},
        "logger": {},
        "evaluate": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    return config
