"""The objective contract and registry: ``losses = objective(backbone, upsampler, images)``.

``losses`` is a dict of scalar tensors whose ``"loss"`` entry is optimised; the other entries are
logged. An objective is an ``nn.Module`` so it may own parameters (e.g. a learned downsampler).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from wrc.backbone import FrozenBackbone
from wrc.upsamplers.base import Upsampler

_REGISTRY: dict[str, type[Objective]] = {}


class Objective(nn.Module):
    name: ClassVar[str] = ""

    def setup(self, backbone: FrozenBackbone) -> None:
        """Create parameters that depend on the backbone (channels, patch size); called before the optimiser
        is built. Objectives without such parameters need nothing here."""

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def register_objective(cls: type[Objective]) -> type[Objective]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} must set a class attribute `name` to register")
    _REGISTRY[cls.name] = cls
    return cls


def list_objectives() -> list[str]:
    return sorted(_REGISTRY)


def create_objective(name: str, **kwargs: Any) -> Objective:
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective (objective.name) {name!r}; available: {', '.join(list_objectives())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for objective {name!r}: {err}") from None
