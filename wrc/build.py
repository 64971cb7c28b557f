"""Build components from plain config dicts (the config groups backbone/, model/, objective/, optimizer/).

Each group node has a ``name`` selecting a registered implementation; the other keys are its arguments
(the optimizer group's keys, defaults and checks are ``wrc.settings.Optimizer``).
Runtime facts (channels, patch size) come from the built backbone, never from the config.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from wrc.backbone import FrozenBackbone
from wrc.objectives import Objective, create_objective
from wrc.settings import Optimizer
from wrc.upsamplers import Upsampler, create_upsampler


def _split(cfg: Mapping[str, Any], group: str) -> tuple[str, dict[str, Any]]:
    if "name" not in cfg:
        raise ValueError(f"the {group} config needs a 'name' key; got keys {sorted(cfg)}")
    kwargs = dict(cfg)
    return kwargs.pop("name"), kwargs


def build_backbone(cfg: Mapping[str, Any]) -> FrozenBackbone:
    name, kwargs = _split(cfg, "backbone")
    return FrozenBackbone(name, **kwargs)


def build_upsampler(cfg: Mapping[str, Any], backbone: FrozenBackbone) -> Upsampler:
    name, kwargs = _split(cfg, "model")
    return create_upsampler(name, backbone.embed_dim, backbone.patch_size, **kwargs)


def build_objective(cfg: Mapping[str, Any]) -> Objective:
    name, kwargs = _split(cfg, "objective")
    return create_objective(name, **kwargs)


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: Mapping[str, Any] | Optimizer, max_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with a constant or warm-up + cosine learning-rate schedule (stepped once per optimiser step).

    ``cfg`` is the optimizer group as a dict (a missing key takes its ``wrc.settings.Optimizer`` default, an
    unknown one is refused) or an ``Optimizer`` already read."""
    settings = cfg if isinstance(cfg, Optimizer) else Optimizer.from_mapping(cfg)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    schedule, warmup, floor = settings.scheduler, settings.warmup_steps, settings.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
