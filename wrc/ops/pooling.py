"""Adaptive max-pooling in operations that trace with symbolic sizes (torch.export, ONNX).

``F.adaptive_max_pool2d`` takes its output size as ``int[2]``: traced with a symbolic size it specialises the
graph to the example's size. This formulation gives the same values from index arithmetic, one
``scatter_reduce`` and one gather per axis, all of which keep their sizes symbolic.

Along one axis of length L pooled to n cells, bin i is [floor(i L / n), ceil((i + 1) L / n)). It splits into
[start_i, start_{i+1}), and these pieces partition the axis (a segmented max, by scatter), and at most one cell
where bin i overlaps bin i + 1 (ceil minus floor of the same number is 0 or 1), taken by a gather.
"""

from __future__ import annotations

import torch


def adaptive_max_pool2d(input: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """The values of ``F.adaptive_max_pool2d(input, output_size)`` (no indices), for (..., H, W) inputs."""
    if input.ndim < 3:
        raise ValueError(f"input must be (..., H, W) with a leading channel axis; got shape {tuple(input.shape)}")
    if len(output_size) != 2:
        raise ValueError(f"output_size must be (H', W'); got {output_size!r}")
    return _pool_axis(_pool_axis(input, output_size[0], input.ndim - 2), output_size[1], input.ndim - 1)


def _pool_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    length = x.shape[dim]
    view = [1] * x.ndim
    view[dim] = -1
    position = torch.arange(length, device=x.device)
    piece = ((position + 1) * size + length - 1) // length - 1  # the last bin starting at or before the position
    out_shape = list(x.shape)
    out_shape[dim] = size
    out = x.new_full(out_shape, float("-inf")).scatter_reduce(
        dim, piece.view(view).expand_as(x), x, reduce="amax", include_self=False)
    cell = torch.arange(size, device=x.device)
    next_start = ((cell + 1) * length) // size
    overlaps = ((cell + 1) * length + size - 1) // size > next_start  # bin i also covers cell next_start
    shared = x.index_select(dim, next_start.clamp(max=length - 1))
    return torch.where(overlaps.view(view), torch.maximum(out, shared), out)
