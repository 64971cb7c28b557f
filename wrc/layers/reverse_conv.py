"""Reverse-convolution layers: learned kernels and weights around the exact solvers of wrc.ops.

``ReverseConv2d`` (Converse2D) learns one kernel and two scalar weights per channel;
``WeightedReverseConv2d`` (WRC) predicts spatial weight maps from the features and the guidance.
Both take the LR features y and an HR prior z on the same geometry, and return argmin_x E(x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.conv import conv3x3
from wrc.ops.reverse_conv import reverse_conv, weighted_reverse_conv


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is half precision (autocast), else as it is: a float64 model solves in float64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class ReverseKernel(nn.Module):
    """Per-channel k x k kernels, positive and summing to one by construction (softmax over the taps).

    Initialised close to the box kernel (every tap 1 / k^2) plus a little noise, so that at the start the
    forward model is a (k > s: widened) block average.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.logits = nn.Parameter(0.01 * torch.randn(channels, kernel_size * kernel_size))

    def forward(self) -> torch.Tensor:
        k = self.kernel_size
        return full_precision(self.logits).softmax(dim=-1).view(-1, k, k)  # C, k, k


class ReverseConv2d(nn.Module):
    """Converse2D: argmin_x lam |y - A x|^2 + alpha |x - z|^2 with learned per-channel lam, alpha and kernel.

    lam = softplus(.) and alpha = alpha_min + softplus(.) keep the solve well posed (alpha >= alpha_min).
    """

    def __init__(self, channels: int, scale: int = 2, kernel_size: int = 2, padding: int = 2,
                 padding_mode: str = "replicate", alpha_min: float = 1e-3) -> None:
        super().__init__()
        if kernel_size < scale:
            raise ValueError(f"kernel_size={kernel_size} must be >= scale={scale}")
        self.scale, self.padding, self.padding_mode, self.alpha_min = scale, padding, padding_mode, alpha_min
        self.kernel = ReverseKernel(channels, kernel_size)
        self.lam_raw = nn.Parameter(torch.full((channels,), 0.5413))  # softplus -> 1.0
        self.alpha_raw = nn.Parameter(torch.full((channels,), 0.5413))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        lam = F.softplus(full_precision(self.lam_raw))
        alpha = self.alpha_min + F.softplus(full_precision(self.alpha_raw))
        with torch.autocast(y.device.type, enabled=False):
            return reverse_conv(full_precision(y), full_precision(z), self.kernel(), self.scale, lam, alpha,
                                padding=self.padding, padding_mode=self.padding_mode)


class BoundedMap(nn.Module):
    """A 3x3 conv head whose output lies in [low, high] by construction (a scaled sigmoid).

    The bounds are the documented range of the WRC weights: they bound the conditioning of the solve.
    Initialised to the constant ``init`` (zero conv weights), so training starts from scalar weights.
    """

    def __init__(self, in_channels: int, out_channels: int, low: float, high: float, init: float) -> None:
        super().__init__()
        if not low < init < high:
            raise ValueError(f"need low < init < high; got {low}, {init}, {high}")
        self.low, self.high = low, high
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.constant_(self.conv.bias, float(torch.logit(torch.tensor((init - low) / (high - low)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place on the fresh conv output (the same ops, so the same bits); the scaling too where no gradient needs
        # the sigmoid's output: map-sized allocations fewer
        logits = full_precision(conv3x3(self.conv, x))
        if self.conv._forward_hooks:  # a hook may keep the conv's output: leave it as it is
            return self.low + (self.high - self.low) * torch.sigmoid(logits)
        unit = torch.sigmoid_(logits)
        if torch.is_grad_enabled():
            return self.low + (self.high - self.low) * unit
        return unit.mul_(self.high - self.low).add_(self.low)


class WeightedReverseConv2d(nn.Module):
    """WRC: argmin_x sum_i wL (y - A x)^2 + sum_n wH (x - z)^2 with predicted spatial weights.

    Args:
        channels: channels of y and z (the solve is depthwise).
        guide_channels: channels of the HR guidance features that, with z, predict wH.
        scale, kernel_size: the forward model A (kernel_size == scale: exact block solve; larger: PCG).
        w_low_max: (max) of wL in [0, max]; wL = 0 lets a location ignore its token.
        w_high_range: (min, max) of wH; min > 0 keeps the system positive definite.
        iterations, tol: PCG budget when kernel_size > scale (iterations=0: one-step approximation).
        weight_maps: channels of each weight map: None = one map per channel, 1 = one map shared by all
            channels (a per-location trust, cheap at the backbone's width).
        low_guide_channels: channels of an optional LR guidance that, with y, predicts wL.
    """

    def __init__(self, channels: int, guide_channels: int, scale: int = 2, kernel_size: int = 2, padding: int = 2,
                 padding_mode: str = "replicate", w_low_max: float = 4.0,
                 w_high_range: tuple[float, float] = (0.05, 4.0), iterations: int = 20, tol: float = 1e-4,
                 weight_maps: int | None = None, low_guide_channels: int = 0) -> None:
        super().__init__()
        if kernel_size < scale:
            raise ValueError(f"kernel_size={kernel_size} must be >= scale={scale}")
        if weight_maps is not None and weight_maps not in (1, channels):
            raise ValueError(f"weight_maps must be None, 1 or channels={channels}; got {weight_maps}")
        self.scale, self.padding, self.padding_mode = scale, padding, padding_mode
        self.iterations, self.tol = iterations, tol
        maps = channels if weight_maps is None else weight_maps
        self.kernel = ReverseKernel(channels, kernel_size)
        self.w_low = BoundedMap(channels + low_guide_channels, maps, 0.0, w_low_max, init=1.0)
        low, high = w_high_range
        self.w_high = BoundedMap(channels + guide_channels, maps, low, high, init=min(1.0, (low + high) / 2))

    def weights(self, y: torch.Tensor, z: torch.Tensor, guide: torch.Tensor,
                low_guide: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        low_input = y if low_guide is None else torch.cat([y, low_guide], dim=1)
        return self.w_low(low_input), self.w_high(torch.cat([z, guide], dim=1))

    def forward(self, y: torch.Tensor, z: torch.Tensor, guide: torch.Tensor,
                low_guide: torch.Tensor | None = None) -> torch.Tensor:
        w_low, w_high = self.weights(y, z, guide, low_guide)
        with torch.autocast(y.device.type, enabled=False):
            return weighted_reverse_conv(full_precision(y), full_precision(z), self.kernel(), self.scale, w_low, w_high,
                                         padding=self.padding, padding_mode=self.padding_mode,
                                         iterations=self.iterations, tol=self.tol)
