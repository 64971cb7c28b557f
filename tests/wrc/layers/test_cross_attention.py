"""Cross-space attention against independent formulations: a per-head loop of explicit softmaxes (global), the
masked global attention (neighbourhood), hand-computed windows (AnyUp's mask, the border-shifted neighbourhood)."""

from __future__ import annotations

import math

import pytest
import torch

from wrc.layers.cross_attention import (
    global_attention,
    neighbourhood_attention,
    neighbourhood_mask,
    window_mask,
    window_starts,
)


def maps(b=2, d=8, out=(6, 5), grid=(4, 3), c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, *out, generator=g, dtype=torch.float64)
    k = torch.randn(b, d, *grid, generator=g, dtype=torch.float64)
    v = torch.randn(b, c, *grid, generator=g, dtype=torch.float64)
    return q, k, v


def explicit(q, k, v, heads, average_heads, allowed=None):
    """softmax(q_h k_h^T / sqrt(d_h)) per head by hand, then the mean of the weights or per-head channel groups."""
    b, d, ho, wo = q.shape
    c, dh = v.shape[1], d // heads
    qf, kf, vf = q.flatten(2), k.flatten(2), v.flatten(2)  # B, D, N
    outs, weights = [], []
    for head in range(heads):
        part = slice(head * dh, (head + 1) * dh)
        logits = torch.einsum("bdn,bdm->bnm", qf[:, part], kf[:, part]) / math.sqrt(dh)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, -math.inf)
        weights.append(logits.softmax(-1))
    if average_heads:
        return torch.einsum("bnm,bcm->bcn", torch.stack(weights).mean(0), vf).reshape(b, c, ho, wo)
    cg = c // heads
    for head, a in enumerate(weights):
        outs.append(torch.einsum("bnm,bcm->bcn", a, vf[:, head * cg:(head + 1) * cg]))
    return torch.cat(outs, 1).reshape(b, c, ho, wo)


@pytest.mark.parametrize("average_heads", [True, False])
def test_global_attention_equals_explicit_softmax_per_head(average_heads):
    q, k, v = maps()
    expected = explicit(q, k, v, heads=2, average_heads=average_heads)
    for chunk in (1, 7, 10_000):  # chunking never changes the result
        got = global_attention(q, k, v, heads=2, average_heads=average_heads, chunk=chunk)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_averaged_heads_give_a_convex_combination_of_tokens():
    q, k, _ = maps(c=1)
    ones = torch.ones(2, 1, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(global_attention(q, k, ones, heads=4), torch.ones(2, 1, 6, 5, dtype=torch.float64))


def test_window_mask_counts_match_anyups_window():
    mask = window_mask((32 * 14, 32 * 14), (32, 32), ratio=0.1)
    per_pixel = mask(slice(0, 32 * 14)).sum(-1)  # the first output row
    assert per_pixel[0] == 4 * 4  # a corner: 4 token rows x 4 token columns
    middle = mask(slice(224 * 448 + 224, 224 * 448 + 225)).sum()
    assert middle == 8 * 8  # p = 0.5: rows [floor(0.4 * 32), ceil(0.6 * 32)) = [12, 20)


def test_window_starts_hand_computed():
    # 10 outputs over 5 tokens: parents 0,0,1,1,2,2,3,3,4,4; a 3-window starts at parent - 1, shifted into [0, 2]
    assert window_starts(10, 5, 3).tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("average_heads", [True, False])
@pytest.mark.parametrize("out,grid", [((8, 12), (4, 6)), ((9, 7), (5, 4)), ((5, 5), (5, 5))])
def test_neighbourhood_attention_equals_masked_global_attention(average_heads, out, grid):
    q, k, v = maps(out=out, grid=grid)
    kernel = 3
    expected = global_attention(q, k, v, heads=2, average_heads=average_heads,
                                mask=neighbourhood_mask(out, grid, kernel))
    for chunk_rows in (1, 3, None):
        got = neighbourhood_attention(q, k, v, kernel=kernel, heads=2, average_heads=average_heads,
                                      chunk_rows=chunk_rows)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_full_kernel_neighbourhood_is_global_attention():
    q, k, v = maps(out=(6, 6), grid=(3, 3))
    torch.testing.assert_close(neighbourhood_attention(q, k, v, kernel=3, heads=2),
                               global_attention(q, k, v, heads=2, average_heads=False), rtol=1e-12, atol=1e-12)


def test_bad_inputs_name_the_argument():
    q, k, v = maps(out=(8, 8), grid=(4, 4))
    with pytest.raises(ValueError, match="at least 9 tokens per side"):
        neighbourhood_attention(q, k, v, kernel=9, heads=2)
    with pytest.raises(ValueError, match="kernel must be odd"):
        neighbourhood_attention(q, k, v, kernel=4, heads=2)
    with pytest.raises(ValueError, match="heads=3 must divide"):
        global_attention(q, k, v, heads=3)
    with pytest.raises(ValueError, match="value channels"):
        global_attention(q, k, v[:, :5], heads=2, average_heads=False)
    with pytest.raises(ValueError, match="keys' grid"):
        global_attention(q, k, v[..., :3], heads=2)
    with pytest.raises(ValueError, match="ratio"):
        window_mask((8, 8), (4, 4), ratio=0)
