"""Padding on all four sides with one fallback rule, shared by the solvers, the JBU and the jitter."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad2d(t: torch.Tensor, cells: int, mode: str) -> torch.Tensor:
    """Pad the last two axes by ``cells`` on every side (F.pad modes). ``reflect`` needs more cells than it
    pads, so on grids too small for it the documented fallback is ``replicate``."""
    if cells == 0:
        return t
    if mode == "reflect" and cells >= min(t.shape[-2:]):
        mode = "replicate"
    return F.pad(t, (cells, cells, cells, cells), mode=mode)
