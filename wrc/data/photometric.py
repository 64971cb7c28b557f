"""Strong photometric augmentation of a guidance image (for augmentation-consistency losses).

Per sample, each with its own probability: colour jitter, grayscale, Gaussian blur and Gaussian
noise. Geometry is never changed, so the augmented image still guides the same token grid.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from wrc.data.augment import ColorJitter


class PhotometricAugment(nn.Module):
    def __init__(self, jitter_p: float = 0.8, grayscale_p: float = 0.1, blur_p: float = 0.35,
                 blur_sigma: tuple[float, float] = (0.3, 1.5), noise_p: float = 0.5, noise_std: float = 0.03) -> None:
        super().__init__()
        for name, p in {"jitter_p": jitter_p, "grayscale_p": grayscale_p, "blur_p": blur_p, "noise_p": noise_p}.items():
            if not 0 <= p <= 1:
                raise ValueError(f"augment.{name} must be a probability in [0, 1]; got {p}")
        self.jitter = ColorJitter(0.2, 0.2, 0.3, 0.05, p=jitter_p)
        self.grayscale_p, self.blur_p, self.blur_sigma = grayscale_p, blur_p, blur_sigma
        self.noise_p, self.noise_std = noise_p, noise_std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        out = self.jitter(image)
        gray = TF.rgb_to_grayscale(out, num_output_channels=3)
        out = torch.where((torch.rand(b, 1, 1, 1) < self.grayscale_p).to(out.device), gray, out)
        blur = torch.rand(b) < self.blur_p
        sigmas = torch.empty(b).uniform_(*self.blur_sigma)
        if blur.any():
            out = torch.stack([TF.gaussian_blur(img, [5, 5], [float(s)]) if flag else img
                               for img, flag, s in zip(out, blur.tolist(), sigmas, strict=True)])
        noisy = (torch.rand(b, 1, 1, 1) < self.noise_p).to(out)
        noise = torch.randn(out.shape, generator=None) * self.noise_std
        return (out + noisy * noise.to(out)).clamp(0, 1)
