"""Modules with GroupNorms whose affine parameters are away from their identity start (weight 1, bias 0), so that
tests comparing a fused or folded GroupNorm against the modules see every term of the map."""

from __future__ import annotations

import torch
from torch import nn


def randomise_group_norms(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` in ``dtype``, eval mode and channels-last, each GroupNorm's weight in [0.5, 1.5] and bias ~ N(0, 0.5)
    (seeded: call after torch.manual_seed for a fixed draw)."""
    module = module.to(dtype)
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, nn.GroupNorm):
                child.weight.uniform_(0.5, 1.5)
                child.bias.normal_(0.0, 0.5)
    return module.eval().to(memory_format=torch.channels_last)
