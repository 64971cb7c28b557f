"""Per-channel moments of channels-last activations: GroupNorm's statistics without a centred copy."""

from __future__ import annotations

import torch

from wrc.ops.extension import extension_enabled


def channel_moments(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance over dim 1 of ``values`` (N, P, C), each (N, C) in float64.

    torch_wrc's kernel takes one float64 pass over the values; the reference (no extension, or inputs that need
    gradients) two passes in the input's dtype, the mean by cascade summation, then the centred squares.
    """
    if values.dim() != 3:
        raise ValueError(f"values must be (N, pixels, channels); got shape {tuple(values.shape)}")
    if (values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64) and values.shape[1] > 0
            and not (torch.is_grad_enabled() and values.requires_grad) and extension_enabled(values.device)):
        return torch.ops.wrc.channel_moments(values)
    mean = values.mean(1, keepdim=True)
    centred = values - mean
    return mean[:, 0].double(), (centred * centred).mean(1).double()
