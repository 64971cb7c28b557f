"""Losses shared by objectives and upsamplers (the FeatUp likelihood, LiFT's distances).

Pure functions of tensors, with no parameters, so that any objective or backbone-side upsampler can use
them without importing another objective's module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTANCES = ("cosine", "l1", "l2")


def feature_distance(pred: torch.Tensor, target: torch.Tensor, distance: str) -> torch.Tensor:
    """Mean distance between (B, C, H, W) maps over batch and positions."""
    if distance == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=1)).mean()
    if distance == "l1":
        return F.l1_loss(pred, target)
    return F.mse_loss(pred, target)


def gaussian_nll(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """mean[(pred - target)^2 / (2 s^2) + log s]; plain MSE without a scale."""
    if scale is None:
        return F.mse_loss(pred, target)
    return ((pred - target).square() / (2 * scale.square()) + scale.log()).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertical and horizontal neighbours."""
    return (x[..., 1:, :] - x[..., :-1, :]).square().mean() + (x[..., :, 1:] - x[..., :, :-1]).square().mean()
