"""A per-channel affine map, an optional residual and ReLU, in place on channels-last activations.

GroupNorm's apply once its statistics are known, fused with what follows it in a bottleneck: one pass over
memory that exists already, where ``addcmul``, ``add_`` and ``relu_`` take three and allocate the output.
"""

from __future__ import annotations

import torch

from wrc.ops.extension import extension_enabled


def channel_affine_(values: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                    residual: torch.Tensor | None = None, residual_scale: torch.Tensor | None = None,
                    relu: bool = False) -> torch.Tensor:
    """``values`` (N, P, C) = [relu](values * scale + shift [+ residual [* residual_scale]]) in place; returned.

    ``scale``, ``shift``, ``residual_scale``: (N, C) of ``values``' dtype; ``residual``: (N, P, C). Not
    differentiable (it overwrites its input): inference only. torch_wrc's kernel takes one pass on the CPU; the
    reference, in-place PyTorch ops, one per term.
    """
    if values.dim() != 3 or not values.is_contiguous():
        raise ValueError(f"values must be contiguous (N, pixels, channels); got shape {tuple(values.shape)}")
    n, _, c = values.shape
    for name, t in (("scale", scale), ("shift", shift), ("residual_scale", residual_scale)):
        if t is not None and (t.shape != (n, c) or t.dtype != values.dtype):
            raise ValueError(f"{name} must be (N, C) = ({n}, {c}) of dtype {values.dtype}; got "
                             f"{tuple(t.shape)} of {t.dtype}")
    if residual is None and residual_scale is not None:
        raise ValueError("residual_scale needs a residual")
    if residual is not None and (residual.shape != values.shape or residual.dtype != values.dtype):
        raise ValueError(f"residual must match values ({tuple(values.shape)}, {values.dtype}); got "
                         f"{tuple(residual.shape)}, {residual.dtype}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (values, scale, shift, residual, residual_scale)):
        raise RuntimeError("channel_affine_ overwrites its input and has no gradient: call it under torch.no_grad()")
    if (values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64)
            and extension_enabled(values.device)):
        torch.ops.wrc.channel_affine_(values, scale, shift, residual, residual_scale, relu)
        return values
    values.mul_(scale[:, None]).add_(shift[:, None])
    if residual is not None:
        values.add_(residual) if residual_scale is None else values.addcmul_(residual, residual_scale[:, None])
    return values.relu_() if relu else values
