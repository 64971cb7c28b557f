"""The bottleneck's fused CPU-inference forward (wrc.layers.norm.group_norm_ after each convolution) against its
modules applied one by one on NCHW inputs (PyTorch's own kernels: nothing of the fused path)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.group_norm import randomise_group_norms
from wrc.layers.blocks import Bottleneck

CL = torch.channels_last


def randomised_bottleneck(in_channels: int, out_channels: int, stride: int, dtype=torch.float64) -> Bottleneck:
    torch.manual_seed(0)
    return randomise_group_norms(Bottleneck(in_channels, out_channels, stride), dtype)


def one_by_one(block: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()  # NCHW: the unfused forward
    return (block.body(x) + block.shortcut(x)).relu()


@pytest.mark.parametrize("in_channels, out_channels, stride", [(8, 8, 1), (8, 8, 2), (8, 16, 1), (12, 6, 2)])
def test_fused_forward_equals_the_modules_float64(in_channels, out_channels, stride):
    block = randomised_bottleneck(in_channels, out_channels, stride)
    torch.manual_seed(1)
    x = (torch.randn(2, in_channels, 13, 10, dtype=torch.float64) + 0.5).contiguous(memory_format=CL)
    before = x.clone()
    with torch.no_grad():
        out = block(x)
        expected = one_by_one(block, x)
    assert out.is_contiguous(memory_format=CL)
    assert torch.equal(x, before)  # the block's input survives (it may be another layer's output too)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_float32_fused_forward_at_rounding_and_training_unchanged():
    block = randomised_bottleneck(16, 16, 2, torch.float32)
    x = torch.rand(1, 16, 40, 36).contiguous(memory_format=CL)
    with torch.no_grad():
        out = block(x)
        expected = one_by_one(block.double(), x.double())
    assert (out.double() - expected).abs().max() < 2e-6 * expected.abs().max()
    block.float().train()
    trained = block(x.requires_grad_())  # autograd: the modules one by one, gradients reach the input
    trained.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_modules_the_fused_pass_cannot_reproduce_are_called():
    """A body activation that is not a plain ReLU, or a norm with a forward hook, is run as a module: the fused
    pass would silently skip it (the oracle: the modules one by one)."""
    block = randomised_bottleneck(8, 8, 1)
    block.body[2] = torch.nn.LeakyReLU(0.2)
    x = (torch.randn(1, 8, 6, 5, dtype=torch.float64) - 0.3).contiguous(memory_format=CL)
    with torch.no_grad():
        torch.testing.assert_close(block(x), one_by_one(block, x), rtol=1e-12, atol=1e-12)
    block = randomised_bottleneck(8, 8, 1)
    seen = []
    block.body[4].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    with torch.no_grad():
        torch.testing.assert_close(block(x), one_by_one(block, x), rtol=1e-12, atol=1e-12)
    assert len(seen) == 2  # the block's call and the oracle's


def test_group_norm_refuses_a_residual_of_another_shape():
    from wrc.layers.norm import group_norm_

    block = randomised_bottleneck(8, 8, 1)
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64).contiguous(memory_format=CL)
    residual = torch.randn(1, 8, 6, 5, dtype=torch.float64).contiguous(memory_format=CL)  # same size, transposed
    with torch.no_grad(), pytest.raises(RuntimeError, match="size of tensor"):
        group_norm_(block.body[1], x, relu=True, residual=residual)
