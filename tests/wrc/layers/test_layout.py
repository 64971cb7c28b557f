"""wrc.layers.layout.contiguous_nchw against Tensor.contiguous (the oracle: PyTorch's own layout copy)."""

from __future__ import annotations

import pytest
import torch

from wrc.layers.layout import contiguous_nchw

CL = torch.channels_last


@pytest.mark.parametrize("shape", [(1, 384, 64, 64), (2, 3, 5, 7), (1, 1000, 3, 300)])  # many chunks, one, ragged
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_copy_equals_contiguous(shape, dtype):
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=CL)
    with torch.no_grad():
        out = contiguous_nchw(x)
    assert out.is_contiguous() and out.dtype == dtype and torch.equal(out, x.contiguous())


def test_other_tensors_take_tensor_contiguous():
    nchw = torch.randn(1, 4, 3, 3)
    assert contiguous_nchw(nchw) is nchw  # already NCHW: no copy
    leaf = torch.randn(1, 4, 3, 3, requires_grad=True)
    out = contiguous_nchw(leaf.contiguous(memory_format=CL))  # autograd: PyTorch's copy, differentiable
    assert out.is_contiguous() and out.grad_fn is not None
    (out * torch.arange(36.0).view(1, 4, 3, 3)).sum().backward()
    assert torch.equal(leaf.grad, torch.arange(36.0).view(1, 4, 3, 3))
