"""The project's OmegaConf resolvers.

Hydra imports every module under ``hydra_plugins`` at start-up, which registers them for any Hydra app;
entry points and tests also call ``register_resolvers()`` explicitly, because plugin discovery does not
reach namespace packages in every install layout. Kept cheap: no torch import here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

CHECKOUT_CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
INSTALLED_CONFIG_PACKAGE = "wrc._config"  # where a wheel carries config/ (setup.py maps the folder there)


def find_config_dir() -> Path:
    """The project's Hydra configs: the checkout's config/ when running from one (edits take effect at once), else
    the copy an installed wheel carries as ``wrc/_config`` (found without importing wrc, so no torch import)."""
    if (CHECKOUT_CONFIG_DIR / "train.yaml").is_file():
        return CHECKOUT_CONFIG_DIR
    spec = importlib.util.find_spec("wrc")
    for location in (spec.submodule_search_locations or []) if spec else []:
        installed = Path(location) / INSTALLED_CONFIG_PACKAGE.split(".")[-1]
        if (installed / "train.yaml").is_file():
            return installed
    raise FileNotFoundError(f"the project's Hydra configs are neither in {CHECKOUT_CONFIG_DIR} (a checkout) nor in "
                            f"the installed {INSTALLED_CONFIG_PACKAGE}: reinstall with `pip install wrc-upsampling` "
                            "or run from a checkout")



def strip_tag(model_name: str) -> str:
    """``vit_small_patch14_dinov2.lvd142m`` -> ``vit_small_patch14_dinov2`` (for run-directory names)."""
    return str(model_name).split("/")[-1].split(".")[0]


def config_dir() -> str:
    """The project's config/ folder (the evaluation app searches its shared groups there)."""
    return str(find_config_dir())


def dataset_name(dataset: object, protocol_dataset: object = None) -> str:
    """A dataset config node's name (the probes' ``dataset=``), else the protocol's own ``protocol.dataset`` name
    (``davis2017``, ``voc07``, ...), else ``protocol_data`` for protocols whose data are other protocol settings."""
    if dataset:
        return str(dataset["name"])
    return str(protocol_dataset) if isinstance(protocol_dataset, str) and protocol_dataset else "protocol_data"


def upsampler_slug(model_name: str, checkpoint: str | None) -> str:
    """``bilinear``, or ``ckpt-<run>-<step>`` for a checkpoint path (the step its LATEST names, for a run or a
    checkpoints/ folder): a folder name that tells runs and steps apart."""
    if not checkpoint:
        return str(model_name)
    path = Path(str(checkpoint))
    parts = [p for p in path.parts if p not in ("/", ".", "..", "checkpoints")][-2:]
    for pointer in (path / "checkpoints" / "LATEST", path / "LATEST"):
        try:
            parts.append(pointer.read_text().strip())
            break
        except OSError:
            continue
    return "ckpt-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(dict.fromkeys(parts)))


RUN_ONLY = ("stop_after_epoch", "stop_after", "max_sequences", "max_categories", "num_workers", "cache_mb")
# how a run is carried out (when it stops on purpose to be resumed, how it loads and caches), not what it measures


def settings_hash(*nodes: object) -> str:
    """8 hex digits of the settings that define an evaluation (upsampler, protocol and dataset nodes), so that
    another setting gets another run directory and the same command the same one (and resumes it)."""
    def plain(node: object) -> object:
        if isinstance(node, (DictConfig, ListConfig)):
            node = OmegaConf.to_container(node, resolve=True)
        if isinstance(node, dict):
            return {k: plain(v) for k, v in sorted(node.items()) if k not in RUN_ONLY}
        return node

    text = json.dumps([plain(node) for node in nodes], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


RESOLVERS = {"wrc.strip_tag": strip_tag, "wrc.config_dir": config_dir, "wrc.dataset_name": dataset_name,
             "wrc.upsampler_slug": upsampler_slug, "wrc.settings_hash": settings_hash}


def register_resolvers() -> None:
    """Register every resolver; safe to call any number of times."""
    for name, function in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
