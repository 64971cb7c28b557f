"""wrc.layers.conv: which convolutions take Winograd's kernel and that every change of their weights is seen,
oneDNN's in-place sum (conv_add_), and the guided networks' head added into the skip connection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.conv import conv3x3, conv_add_, takes_winograd
from wrc.upsamplers.base import create_upsampler

torch_wrc = pytest.importorskip("torch_wrc")
needs_kernels = pytest.mark.skipif(not torch_wrc.is_available(), reason="torch_wrc not built")

CL = torch.channels_last


def wide_conv(bias=True) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(64, 80, 3, padding=1, bias=bias).to(memory_format=CL)


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).relu().contiguous(memory_format=CL)


@needs_kernels
def test_wide_3x3_convolutions_take_winograd_for_cpu_inference_only():
    conv, x = wide_conv(), channels_last(1, 64, 10, 12)
    with torch.no_grad():
        assert takes_winograd(conv, x)
        assert not takes_winograd(conv, x.contiguous())  # NCHW: oneDNN's layout reorders would cost more
        assert not takes_winograd(conv, x.double())  # the weights' dtype differs
        for changed in (nn.Conv2d(64, 80, 3, padding=1, stride=2), nn.Conv2d(64, 80, 3, padding=2, dilation=2),
                        nn.Conv2d(64, 80, 3, padding=1, groups=2), nn.Conv2d(64, 80, 3, padding=1,
                                                                            padding_mode="reflect"),
                        nn.Conv2d(64, 80, 1), nn.Conv2d(64, 32, 3, padding=1)):  # last: too narrow
            assert not takes_winograd(changed, x)
        hooked = wide_conv()
        hooked.register_forward_hook(lambda *args: None)
        assert not takes_winograd(hooked, x)
    assert not takes_winograd(conv, x)  # autograd: the differentiable nn.Conv2d


@needs_kernels
@pytest.mark.parametrize("bias", [True, False])
def test_conv3x3_equals_the_module(bias):
    conv, x = wide_conv(bias), channels_last(2, 64, 9, 14)
    with torch.no_grad():
        out = conv3x3(conv, x)
        exact = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                         padding=1)
        direct = conv(x).double()
    assert out.is_contiguous(memory_format=CL)
    assert (out.double() - exact).abs().max() <= 4 * (direct - exact).abs().max() + 1e-6 * exact.abs().max()


@needs_kernels
def test_every_change_of_the_weight_is_seen():
    """The kernels are transformed on every call: in-place changes, through .data too (which no version counter
    sees), and load_state_dict all reach the next call; inference mode then no_grad share the thread's buffers."""
    conv, x = wide_conv(), channels_last(1, 64, 6, 6)
    with torch.no_grad():
        conv3x3(conv, x)
        conv.weight.data.mul_(2.0)
        torch.testing.assert_close(conv3x3(conv, x), conv(x), rtol=1e-5, atol=1e-5)
        other = wide_conv()
        other.weight.add_(1.0)
        conv.load_state_dict(other.state_dict())
        torch.testing.assert_close(conv3x3(conv, x), other(x), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        made_here = nn.Conv2d(64, 80, 3, padding=1).to(memory_format=CL)
        inside = conv3x3(made_here, x)
    with torch.no_grad():
        torch.testing.assert_close(conv3x3(made_here, x), inside, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_add_sums_into_the_given_map(dtype):
    torch.manual_seed(0)
    x = torch.randn(1, 16, 9, 8, dtype=dtype).contiguous(memory_format=CL)
    weight, bias = torch.randn(24, 16, 3, 3, dtype=dtype), torch.randn(24, dtype=dtype)
    out = torch.randn(1, 24, 5, 4, dtype=dtype).contiguous(memory_format=CL)
    expected = out.double() + F.conv2d(x.double(), weight.double(), bias.double(), stride=2, padding=1)
    storage = out.data_ptr()
    with torch.no_grad():
        result = conv_add_(out, x, weight, bias, 2, (1, 1))
    assert result.data_ptr() == storage
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(result.double(), expected, rtol=tol, atol=tol)


def test_head_plus_adds_the_head_into_the_skip():
    torch.manual_seed(0)
    model = create_upsampler("wrc", 48, 8).eval()
    hidden = channels_last(1, 24, 6, 6)
    skip = torch.randn(1, 48, 6, 6).contiguous(memory_format=CL)
    expected = model.head(hidden) + skip
    with torch.no_grad():
        out = model.head_plus(hidden, skip.clone())
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(model.head_plus(hidden, skip), expected)  # autograd: the head, then the sum
    model.head = nn.Conv2d(24, 48, 3, padding=1).to(memory_format=CL)  # not a 1x1 head: called as it is
    with torch.no_grad():
        torch.testing.assert_close(model.head_plus(hidden, skip.clone()), model.head(hidden) + skip)
