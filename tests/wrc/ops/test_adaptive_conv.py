"""The adaptive convolution's reference against a hand-written loop, and its argument checks."""

from __future__ import annotations

import itertools

import pytest
import torch

from wrc.ops.adaptive_conv import adaptive_conv, adaptive_conv_reference
from wrc.ops.extension import reference_only


def loop_oracle(input: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """out[b,c,y,x] = sum_ij filters[b,y,x,i,j] input[b,c,y+i,x+j], one element at a time."""
    b, h, w, k, _ = filters.shape
    out = torch.zeros(b, input.shape[1], h, w, dtype=input.dtype)
    for bi, c, y, x in itertools.product(range(b), range(input.shape[1]), range(h), range(w)):
        out[bi, c, y, x] = sum(filters[bi, y, x, i, j] * input[bi, c, y + i, x + j]
                               for i, j in itertools.product(range(k), range(k)))
    return out


def problem(b=2, c=3, h=4, w=5, k=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, h + k - 1, w + k - 1, generator=g, dtype=dtype),
            torch.randn(b, h, w, k, k, generator=g, dtype=dtype))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_reference_matches_the_loop(k):
    input, filters = problem(k=k)
    torch.testing.assert_close(adaptive_conv_reference(input, filters), loop_oracle(input, filters))


def test_delta_filter_picks_one_neighbour():
    """A filter that is 1 at tap (i, j) shifts the input by (i, j): out = input[..., i:i+H, j:j+W]."""
    input, filters = problem(k=5)
    filters.zero_()
    filters[..., 1, 3] = 1.0
    torch.testing.assert_close(adaptive_conv_reference(input, filters), input[..., 1:5, 3:8])


def test_gradcheck_reference():
    input, filters = problem(b=1, c=2, h=3, w=3, k=3)
    assert torch.autograd.gradcheck(adaptive_conv_reference, (input.requires_grad_(), filters.requires_grad_()))


def test_dispatch_without_the_extension_uses_the_reference():
    input, filters = problem()
    with reference_only():
        torch.testing.assert_close(adaptive_conv(input, filters), loop_oracle(input, filters))


def test_bad_input_is_a_clear_error():
    input, filters = problem(k=3)
    with pytest.raises(ValueError, match=r"filters must be \(B, H, W, k, k\)"):
        adaptive_conv(input, filters[..., :2])
    with pytest.raises(ValueError, match=r"pad the input by k // 2 first"):
        adaptive_conv(input[..., 1:, 1:], filters)
    with pytest.raises(ValueError, match="must share one dtype"):
        adaptive_conv(input.float(), filters)
