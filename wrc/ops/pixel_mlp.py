"""Two 1x1 convolutions with a ReLU between them, per pixel of channels-last activations, for inference.

y = W2 relu(W1 x + b1) + b2 at each pixel of x (N, P, C_in). torch_wrc's kernels keep the hidden values of six
pixels at a time in L1 and either write y (``pixel_mlp``, ``pixel_mlp_into``) or only its per-channel float64
mean and variance (``pixel_mlp_moments``: GroupNorm's statistics of the second convolution's output without the
map itself). The references, differentiable, are the same arithmetic in PyTorch ops (the moments in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrc.ops.extension import extension_enabled


def _check(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor | None) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be (N, pixels, C_in); got shape {tuple(x.shape)}")
    if w1.dim() != 2 or w1.shape[1] != x.shape[2] or b1.shape != (w1.shape[0],):
        raise ValueError(f"need w1 (K, C_in = {x.shape[2]}) and b1 (K,); got {tuple(w1.shape)}, {tuple(b1.shape)}")
    if w2.dim() != 2 or w2.shape[1] != w1.shape[0] or (b2 is not None and b2.shape != (w2.shape[0],)):
        raise ValueError(f"need w2 (M, K = {w1.shape[0]}) and b2 (M,) or None; got {tuple(w2.shape)}, "
                         f"{None if b2 is None else tuple(b2.shape)}")


def pixel_mlp_serves(x: torch.Tensor) -> bool:
    """Whether torch_wrc's kernels can take ``x`` (float32/64 on the CPU, the extension built): where they do not,
    the references compute whole maps."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and extension_enabled(x.device)
            and hasattr(torch.ops.wrc, "pixel_mlp"))


def _kernel_serves(*tensors: torch.Tensor | None) -> bool:
    """torch_wrc's kernels: float32/64 on the CPU, no gradient wanted (they have no backward; the reference has)."""
    return pixel_mlp_serves(tensors[0]) and not (torch.is_grad_enabled()
                                                 and any(t is not None and t.requires_grad for t in tensors))


def _reference(x, w1, b1, w2, b2):
    return F.linear(F.linear(x, w1, b1).relu_(), w2, b2)


def pixel_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor | None = None,
              relu: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """[relu](W2 relu(W1 x + b1) + b2) per pixel of ``x`` (N, P, C_in) -> (N, P, M); into ``out`` (N, P, M,
    contiguous) when given, which is returned. w1 (K, C_in), b1 (K,), w2 (M, K), b2 (M,) or None."""
    _check(x, w1, b1, w2, b2)
    if out is not None and (out.shape != (*x.shape[:2], w2.shape[0]) or not out.is_contiguous()):
        raise ValueError(f"out must be contiguous (N, P, M) = {(*x.shape[:2], w2.shape[0])}; got {tuple(out.shape)}")
    if _kernel_serves(x, w1, b1, w2, b2):
        if out is None:
            return torch.ops.wrc.pixel_mlp(x, w1, b1, w2, b2, relu)
        torch.ops.wrc.pixel_mlp_into(out, x, w1, b1, w2, b2, relu)
        return out
    y = _reference(x, w1, b1, w2, b2)
    if relu:
        y = y.relu_()
    return y if out is None else out.copy_(y)


def pixel_mlp_moments(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                      b2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and population variance over the pixels, (N, M) each in float64, of ``pixel_mlp(x, ...)``."""
    _check(x, w1, b1, w2, b2)
    if x.shape[1] == 0:
        raise ValueError("x has no pixels: the moments are undefined")
    if _kernel_serves(x, w1, b1, w2, b2):
        return torch.ops.wrc.pixel_mlp_moments(x, w1, b1, w2, b2)
    y = _reference(x, w1, b1, w2, b2).double()
    return y.mean(1), y.var(1, unbiased=False)
