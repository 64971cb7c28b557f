"""One entry point for every protocol: ``python -m evaluation protocol=<name> [group=option] [key=value ...]``.

    python -m evaluation protocol=fidelity backbone=dinov2_vits14 model=bilinear protocol.root=/data/val
    python -m evaluation protocol=probe_segmentation dataset=voc2012 dataset.root=/data/voc checkpoint=outputs/<run>
    python -m evaluation -m protocol=probe_depth dataset=nyuv2 dataset.root=/data/nyu model=bilinear,lift
    python -m evaluation -m hydra/launcher=slurm hydra.launcher.partition=gpu protocol=probe_segmentation ...
    python -m evaluation --help                                   # groups, protocols and the composed config
    wrc-eval protocol=fidelity ...                                # the same, installed (pip install wrc-upsampling)

The config is config/eval/evaluate.yaml; each protocol's settings are its dataclass (defaults there
only), selected with protocol=<name> (config/eval/protocol/). Each run writes result.json into its run
directory (outputs/eval/<protocol>/<dataset>/<upsampler>/); running the same command again resumes a
killed run. ``run(config, protocol)`` is the same without Hydra.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from evaluation.protocol import PROTOCOLS, evaluate, get_protocol
from evaluation.records import ResultRecord
from hydra_plugins.wrc_resolvers import config_dir, register_resolvers
from wrc.build import build_backbone
from wrc.distributed import resolve_device
from wrc.extractor import build_extractor

log = logging.getLogger("wrc")
TOP_LEVEL = ("backbone", "model", "dataset", "protocol", "device", "checkpoint", "allow_backbone_mismatch", "run_dir")


def register_schemas() -> None:
    """Every protocol's settings dataclass as ``protocol_schema/<name>``, which its YAML extends: the dataclass is
    the one source of the defaults, and Hydra rejects a misspelt ``protocol.<key>``."""
    store = ConfigStore.instance()
    for name in PROTOCOLS.names():
        store.store(group="protocol_schema", name=name, node=PROTOCOLS.get(name).Settings)


def takes_dataset_node(settings_class: type) -> bool:
    """Whether a protocol reads the top-level ``dataset=`` group (the probes: a config/dataset/ node); protocols whose
    ``dataset`` is a name (``protocol.dataset=davis2017``) or that have none do not."""
    fields = {f.name: f for f in dataclasses.fields(settings_class)}
    return "dataset" in fields and "dict" in str(fields["dataset"].type)


def run(config: Mapping[str, Any], protocol: str, command: str | None = None) -> ResultRecord | None:
    """Evaluate the configured upsampler (``checkpoint`` or ``model``) on the configured backbone with ``protocol``;
    returns its record (None when the protocol stopped early on purpose)."""
    unknown = sorted(set(config) - set(TOP_LEVEL))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the evaluation config; valid keys: {', '.join(TOP_LEVEL)}")
    chosen = get_protocol(protocol)
    settings = dict(config.get("protocol") or {})
    if config.get("dataset") is not None:
        if not takes_dataset_node(chosen.Settings):
            names = [f.name for f in dataclasses.fields(chosen.Settings)]
            how = ("name its dataset with protocol.dataset=<name> and protocol.root=<folder>" if "dataset" in names
                   else f"its data are configured under protocol.*: {', '.join(names)}")
            raise ValueError(f"protocol={protocol} takes no dataset= group ({how})")
        settings["dataset"] = dict(config["dataset"])
    settings = chosen.settings(settings)
    device = resolve_device(str(config.get("device", "auto")))
    backbone = chosen.make_backbone(settings) or build_backbone(config["backbone"])
    spec = {"checkpoint": config["checkpoint"]} if config.get("checkpoint") else config["model"]
    extractor = build_extractor(backbone.to(device), spec, device=device,
                                allow_backbone_mismatch=bool(config.get("allow_backbone_mismatch", False)))
    return evaluate(chosen, extractor, settings, config["run_dir"], command=command)


register_resolvers()
register_schemas()


@hydra.main(version_base="1.3", config_path=str(Path(config_dir()) / "eval"), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    protocol = hydra_cfg.runtime.choices["protocol"]
    command = " ".join(["python -m evaluation", *hydra_cfg.overrides.task])  # this job, also in a sweep or on SLURM
    record = run(OmegaConf.to_container(cfg, resolve=True), protocol, command)
    if record is None:
        print(f"stopped early on purpose; run the same command again to resume ({cfg.run_dir})")
        return
    shown = {m: record.metrics[m] for m in get_protocol(record.protocol).table.headline if m in record.metrics}
    print(f"{record.protocol} / {record.dataset.get('name')} / {record.label}: {shown}  ->  {cfg.run_dir}/result.json")


def cli() -> None:
    """``python -m evaluation ...``, or ``wrc-eval ...`` once installed."""
    main()


if __name__ == "__main__":
    cli()
