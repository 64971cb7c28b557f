"""The project's OmegaConf resolvers.

Hydra imports every module under ``hydra_plugins`` at start-up, which registers them for any Hydra app;
entry points and tests also call ``register_resolvers()`` explicitly, because plugin discovery does not
reach namespace packages in every install layout. Kept cheap: no torch import here.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def strip_tag(model_name: str) -> str:
    """``vit_small_patch14_dinov2.lvd142m`` -> ``vit_small_patch14_dinov2`` (for run-directory names)."""
    return str(model_name).split("/")[-1].split(".")[0]


def config_dir() -> str:
    """The project's config/ folder (the evaluation app searches its shared groups there)."""
    return str(CONFIG_DIR)


def dataset_name(dataset: object) -> str:
    """A dataset config node's name, or ``images`` for protocols without a dataset group."""
    return str(dataset["name"]) if dataset else "images"


def upsampler_slug(model_name: str, checkpoint: str | None) -> str:
    """``bilinear``, or ``ckpt-<run>-<step>`` for a checkpoint path: a folder name that tells runs apart."""
    if not checkpoint:
        return str(model_name)
    parts = [p for p in Path(str(checkpoint)).parts if p not in ("/", ".", "..", "checkpoints")][-2:]
    return "ckpt-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))


RESOLVERS = {"wrc.strip_tag": strip_tag, "wrc.config_dir": config_dir, "wrc.dataset_name": dataset_name,
             "wrc.upsampler_slug": upsampler_slug}


def register_resolvers() -> None:
    """Register every resolver; safe to call any number of times."""
    for name, function in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
