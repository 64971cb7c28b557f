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


def cos_mse(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """JAFAR's and AnyUp's loss: mean(1 - cos) over positions plus the MSE after scaling both maps by the target's
    per-position range over channels, (x - m) / (M - m + eps) with m, M the target's min and max (the MSE term
    sees magnitudes, which cosine alone leaves free, without being dominated by high-norm tokens)."""
    low, high = target.amin(dim=1, keepdim=True), target.amax(dim=1, keepdim=True)
    span = high - low + eps
    cosine = (1 - F.cosine_similarity(pred, target, dim=1)).mean()
    return cosine + F.mse_loss((pred - low) / span, (target - low) / span)
