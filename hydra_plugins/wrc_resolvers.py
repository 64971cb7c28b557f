"""The project's OmegaConf resolvers.

Hydra imports every module under ``hydra_plugins`` at start-up, which registers them for any Hydra app;
entry points and tests also call ``register_resolvers()`` explicitly, because plugin discovery does not
reach namespace packages in every install layout. Kept cheap: no torch import here.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def strip_tag(model_name: str) -> str:
    """``vit_small_patch14_dinov2.lvd142m`` -> ``vit_small_patch14_dinov2`` (for run-directory names)."""
    return str(model_name).split("/")[-1].split(".")[0]


RESOLVERS = {"wrc.strip_tag": strip_tag}


def register_resolvers() -> None:
    """Register every resolver; safe to call any number of times."""
    for name, function in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
