"""Shared fixtures: a tiny random-init timm ViT, generated images, the device option, a training config.

``pytest --device cuda`` (or ``--device cpu,cuda``) reruns every test that takes the ``device`` fixture on
those devices; the default is the CPU alone, so the suite runs anywhere.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download weights (read by huggingface_hub at import)

from pathlib import Path

import pytest
import torch

from wrc import FrozenBackbone

try:  # Hydra belongs to the entry points, not the library: a GPU machine may run the device tests without it
    from hydra_plugins.wrc_resolvers import register_resolvers
except ModuleNotFoundError as err:
    if err.name not in ("hydra", "omegaconf"):
        raise
else:
    register_resolvers()

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "config"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu",
                     help="comma-separated devices for tests taking the `device` fixture (e.g. cpu,cuda)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        devices = [d.strip() for d in metafunc.config.getoption("--device").split(",") if d.strip()]
        metafunc.parametrize("device", devices, indirect=True)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    """A device named by --device; a CUDA device without a GPU (or without the compiled kernels) fails loudly,
    so a GPU run cannot pass by skipping everything."""
    name = request.param
    if name.startswith("cuda"):
        import torch_wrc

        if not torch.cuda.is_available():
            pytest.fail(f"--device {name} was asked for, but torch sees no CUDA device")
        if not torch_wrc.has_cuda_kernels():
            pytest.fail(f"--device {name}: torch_wrc was built without CUDA kernels (reinstall with FORCE_CUDA=1)")
    return name


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
