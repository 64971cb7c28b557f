#!/usr/bin/env python
"""Train a feature upsampler on a frozen ViT, then report its fidelity against bilinear.

    python train_wrc.py experiment=quickstart                     # built-in samples, CPU, < 3 min
    python train_wrc.py model=lift backbone=dinov2_vits14 data.root=/data/imagenet/train
    torchrun --nproc_per_node=8 train_wrc.py model=lift data.root=...
    python train_wrc.py --help                                    # config groups and the full config
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.wrc_resolvers import register_resolvers

register_resolvers()
log = logging.getLogger("wrc")


def run(config: dict) -> dict:
    """Train, then (on the main process) evaluate and draw; returns the output paths and metrics."""
    from evaluation.report import report_training_run
    from wrc.distributed import shutdown_distributed
    from wrc.training import train

    try:
        result = train(config)
        outputs = {"run_dir": result.run_dir, "checkpoint": result.checkpoint}
        if result.is_main and config.get("evaluate", {}).get("enabled", False):
            outputs.update(report_training_run(result.run_dir, result.backbone, result.upsampler, config["evaluate"]))
    finally:
        shutdown_distributed()
    if result.is_main:
        for name, metrics in outputs.get("results", {}).items():
            log.info("fidelity %-10s cosine %.4f  rel_l2 %.4f", name, metrics["cosine"], metrics["rel_l2"])
        for key in ("run_dir", "checkpoint", "metrics", "figure"):
            if key in outputs:
                print(f"{key:>10}: {outputs[key]}")
    return outputs


@hydra.main(version_base="1.3", config_path="config", config_name="train")
def main(cfg: DictConfig) -> None:
    run(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
