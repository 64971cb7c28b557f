"""Batched, per-sample colour jitter on [0, 1] images (LiFT trains with colour jitter only)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

_LUMA = (0.299, 0.587, 0.114)


def _gray(image: torch.Tensor) -> torch.Tensor:
    weights = image.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (image * weights).sum(dim=1, keepdim=True)


class ColorJitter(nn.Module):
    """Brightness, contrast, saturation and hue jitter with independent factors per sample.

    Unlike ``torchvision.transforms.ColorJitter`` on a batch, every image gets its own factors, drawn
    from the global torch RNG (saved in checkpoints, so resumed runs draw the same ones).

    Args:
        brightness, contrast, saturation: factors drawn uniformly from [1 - v, 1 + v].
        hue: shift drawn uniformly from [-v, v] (fraction of the colour wheel, at most 0.5).
        p: probability that an image is jittered at all.
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1,
                 p: float = 0.8) -> None:
        super().__init__()
        for arg, value in {"brightness": brightness, "contrast": contrast, "saturation": saturation}.items():
            if not 0 <= value <= 1:
                raise ValueError(f"jitter.{arg} must lie in [0, 1]; got {value}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"jitter.hue must lie in [0, 0.5]; got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]

        def factors(spread: float) -> torch.Tensor:
            return (1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * spread).to(image)

        apply = (torch.rand(b, 1, 1, 1) < self.p).to(image)
        bright, contr, sat = factors(self.brightness), factors(self.contrast), factors(self.saturation)
        hue = (torch.rand(b) * 2 - 1) * self.hue
        out = (image * bright).clamp(0, 1)
        mean = _gray(out).mean(dim=(2, 3), keepdim=True)
        out = ((out - mean) * contr + mean).clamp(0, 1)
        gray = _gray(out)
        out = ((out - gray) * sat + gray).clamp(0, 1)
        if self.hue > 0:
            out = torch.stack([TF.adjust_hue(img, float(h)) for img, h in zip(out, hue, strict=True)])
        return apply * out + (1 - apply) * image
