#!/usr/bin/env python
"""Train a feature upsampler on a frozen ViT, then report its fidelity against bilinear.

    python train_wrc.py experiment=quickstart                     # built-in samples, CPU, < 3 min
    python train_wrc.py model=lift backbone=dinov2_vits14 data.root=/data/imagenet/train
    torchrun --nproc_per_node=8 train_wrc.py model=lift data.root=...
    python train_wrc.py --help                                    # config groups and the full config
    wrc-train experiment=quickstart                               # the same, installed (pip install wrc-upsampling)

The defaults of the top-level keys, train.*, logger.* and optimizer.* are the dataclasses of wrc/settings.py;
``register_configs`` puts them in Hydra's ConfigStore, where config/train.yaml and config/optimizer/adamw.yaml
take them from (their defaults lists), so the YAML files restate none and Hydra type-checks every override.
"""

from __future__ import annotations

import logging

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from evaluation.report_settings import ReportSettings
from hydra_plugins.wrc_resolvers import config_dir
from wrc.settings import Optimizer, RunSettings

# ConfigStore name -> the dataclass whose fields are that config's keys and defaults.
SETTINGS = {"run_settings": RunSettings, "optimizer_settings": Optimizer, "report_settings": ReportSettings}
log = logging.getLogger("wrc")


def register_configs() -> None:
    """Store wrc.settings' dataclasses in Hydra's ConfigStore (config/train.yaml and config/optimizer/adamw.yaml
    name them in their defaults lists); safe to call any number of times."""
    store = ConfigStore.instance()
    for name, node in SETTINGS.items():
        store.store(name=name, node=node)


register_configs()


def run(config: dict) -> dict:
    """Train, then (on the main process) evaluate and draw; returns the output paths and metrics."""
    from evaluation.report import report_settings, report_training_run
    from wrc.distributed import shutdown_distributed
    from wrc.training import train

    report = report_settings(config.get("evaluate"))  # checked before training, not after hours of it
    try:
        result = train(config)
        outputs = {"run_dir": result.run_dir, "checkpoint": result.checkpoint}
        if result.is_main and report.enabled:
            outputs.update(report_training_run(result.run_dir, result.backbone, result.upsampler, report,
                                               checkpoint=result.checkpoint))
    finally:
        shutdown_distributed()
    if result.is_main:
        for name, metrics in outputs.get("results", {}).items():
            log.info("fidelity %-10s cosine %.4f  rel_l2 %.4f", name, metrics["cosine"], metrics["rel_l2"])
        for key in ("run_dir", "checkpoint", "metrics", "figure"):
            if key in outputs:
                print(f"{key:>10}: {outputs[key]}")
    return outputs


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    run(OmegaConf.to_container(cfg, resolve=True))


def cli() -> None:
    """``python train_wrc.py ...`` in a checkout, ``wrc-train ...`` (or ``python -m train_wrc``) once installed.

    Hydra finds the resolvers in hydra_plugins too, but not in every install layout. Registered here, so that
    importing this module (tests) stores the settings and registers nothing else."""
    from hydra_plugins.wrc_resolvers import register_resolvers

    register_resolvers()
    main()


if __name__ == "__main__":
    cli()
