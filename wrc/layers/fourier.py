"""Fourier features of coordinates and colours with learned phases (LoftUp's queries and its token encoding).

For J input maps v_j and n frequencies f_k = exp(linspace(low, high, n)), the features are
sin(v_j f_k + a_kj) then cos(v_j f_k + b_kj), frequency-major (channel J k + j), 2 J n channels in all.
The phases are stored as (2, J, n), as the original checkpoints hold them, and added after a row-major reshape
to (n, J): channel J k + j gets entry J k + j of the flattened (J, n) block. That pairs phases with channels
in an order that looks scrambled, but loading the released weights needs exactly it (modern_peers.md 3.1).
"""

from __future__ import annotations

import torch
from torch import nn


def coordinate_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, H, W): row and column coordinates ``linspace(-1, 1)`` on each axis."""
    rows = torch.linspace(-1, 1, height, device=like.device, dtype=like.dtype)
    cols = torch.linspace(-1, 1, width, device=like.device, dtype=like.dtype)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij")).unsqueeze(0)


def minmax_scale(image: torch.Tensor, over_batch: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Per channel (x - min) / max(max - min, eps) - 0.5, with min and max over space and, as in LoftUp, over the
    batch (``over_batch=False``: per image, so that an image's encoding does not depend on its batch mates)."""
    dims = (0, 2, 3) if over_batch else (2, 3)
    low, high = image.amin(dim=dims, keepdim=True), image.amax(dim=dims, keepdim=True)
    return (image - low) / (high - low).clamp_min(eps) - 0.5


class FourierFeatures(nn.Module):
    """(B, J, H, W) values -> (B, 2 J n, H, W) sines and cosines with learned phases (zeros at init)."""

    def __init__(self, num_inputs: int, num_frequencies: int, low: float = -2.0, high: float = 10.0) -> None:
        super().__init__()
        self.num_inputs, self.num_frequencies = num_inputs, num_frequencies
        self.register_buffer("frequencies", torch.linspace(low, high, num_frequencies).exp(), persistent=False)
        self.phases = nn.Parameter(torch.zeros(2, num_inputs, num_frequencies))

    @property
    def out_channels(self) -> int:
        return 2 * self.num_inputs * self.num_frequencies

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if values.dim() != 4 or values.shape[1] != self.num_inputs:
            raise ValueError(f"values must be (B, {self.num_inputs}, H, W); got {tuple(values.shape)}")
        b, j, h, w = values.shape
        angles = values.unsqueeze(1) * self.frequencies.view(1, -1, 1, 1, 1)  # B, n, J, H, W: channel J k + j
        angles = angles.reshape(b, self.num_frequencies * j, h, w)
        sin_phase, cos_phase = (p.reshape(-1).view(1, -1, 1, 1) for p in self.phases)
        return torch.cat([(angles + sin_phase).sin(), (angles + cos_phase).cos()], dim=1)
