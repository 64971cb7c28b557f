"""The objective contract and registry: ``losses = objective(backbone, upsampler, images)``.

``losses`` is a dict of scalar tensors whose ``"loss"`` entry is optimised; the other entries are
logged. An objective is an ``nn.Module`` so it may own parameters (e.g. a learned downsampler).

Every module of this package (and of any folder added to its ``__path__``) is imported at the first
lookup, so a new objective is one new file whose class carries ``@register_objective``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from wrc.backbone import FrozenBackbone
from wrc.registry import Registry
from wrc.upsamplers.base import Upsampler

OBJECTIVES: Registry[type[Objective]] = Registry("objective", "objective.name", package="wrc.objectives")


class Objective(nn.Module):
    name: ClassVar[str] = ""

    def setup(self, backbone: FrozenBackbone) -> None:
        """Create parameters that depend on the backbone (channels, patch size); called before the optimiser
        is built. Objectives without such parameters need nothing here."""

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make ``cls`` constructible by its ``name``; a taken name is refused.

    A class defined outside ``wrc.objectives`` first sees every built-in objective, so a clash fails at its
    own definition rather than at the first lookup.
    """
    if not cls.__module__.startswith(f"{OBJECTIVES.package}."):
        OBJECTIVES.discover()
    return OBJECTIVES.register(cls)


def list_objectives() -> list[str]:
    """Names accepted by ``create_objective`` (and by ``objective=`` on the command line)."""
    return OBJECTIVES.names()


def get_objective_class(name: str) -> type[Objective]:
    return OBJECTIVES.get(name)


def create_objective(name: str, **kwargs: Any) -> Objective:
    """Build a registered objective from its config arguments."""
    cls = get_objective_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for objective {name!r}: {err}") from None
