#!/usr/bin/env python
"""Train and evaluate a linear probe on frozen backbone + upsampler features (Hydra app).

    python evaluation/train_probe.py dataset=voc2012 dataset.root=/data/voc model=bilinear
    python evaluation/train_probe.py dataset=ade20k dataset.root=/data/ade model=wrc model.checkpoint=outputs/<run>
    python evaluation/train_probe.py -m model=bilinear,lift,wrc dataset=voc2012,ade20k     # local sweep
    python evaluation/train_probe.py -m hydra/launcher=submitit_slurm ...                 # on a SLURM cluster

The protocol and its options are described in evaluation/probe.py; results land in the run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from hydra_plugins.wrc_resolvers import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../config", config_name="eval/probe")
def main(cfg: DictConfig) -> None:
    from evaluation.probe import train_probe

    record = train_probe(OmegaConf.to_container(cfg, resolve=True))
    metrics = record["metrics"]
    headline = {k: metrics[k] for k in ("miou", "pixel_accuracy", "d1", "rmse", "abs_rel") if k in metrics}
    print(f"{record['dataset']} / {cfg.model.name}: {headline}  ->  {cfg.run_dir}/result.json")


if __name__ == "__main__":
    main()
