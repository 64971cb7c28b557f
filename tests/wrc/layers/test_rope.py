"""Both 2-D rotary encodings: hand-computed angles, the norm preservation that only the axial one has."""

from __future__ import annotations

import math

import pytest
import torch

from wrc.layers.rope import AxialRope, LearnedPairRope


def test_axial_rope_hand_computed_single_period():
    rope = AxialRope(dim=4, heads=1)  # D_head = 4: one period, 100^0 = 1
    x = torch.zeros(1, 4, 2, 1, dtype=torch.float64)
    x[:, 0] = 1.0
    out = rope.eval()(x)
    # row 0 of 2: centre coordinate 2 * 0.5 / 2 - 1 = -0.5, angle 2 pi * -0.5 = -pi; channel 0 turns with channel 2
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=torch.float64),
                               atol=1e-12, rtol=0)
    # row 1: +0.5 -> +pi, the same point of the circle
    torch.testing.assert_close(out[0, :, 1, 0], torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_axial_rope_preserves_each_heads_norm_and_rescales_only_in_training():
    rope = AxialRope(dim=32, heads=2, rescale=2.0)
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64)
    for mode in (rope.eval(), rope.train()):
        out = mode(x)
        torch.testing.assert_close(out.view(2, 2, 16, 5, 7).norm(dim=2), x.view(2, 2, 16, 5, 7).norm(dim=2))
    rope.eval()
    torch.testing.assert_close(rope(x), rope(x))  # deterministic without the train-time rescale


def test_learned_pair_rope_init_and_one_cycle_per_side():
    rope = LearnedPairRope(dim=8)  # two frequencies: g = 100^0 = 1 and 100^-1
    phi = rope.frequencies.detach().double()
    expected_row = 2 * math.pi * torch.tensor([1, 0.01, 1, 0.01, 0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(phi[0], expected_row, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(phi[1], expected_row.roll(4), rtol=1e-6, atol=1e-6)
    theta = rope.angles(3, 3)
    assert theta[0, -1, 0].item() == pytest.approx(2 * math.pi, rel=1e-6)  # the last row is one full turn


def test_learned_pair_rope_is_not_a_rotation():
    rope = LearnedPairRope(dim=8)
    x = torch.zeros(1, 8, 5, 5, dtype=torch.float64)
    x[:, 0] = 1.0  # channel 0 turns with the row angle; its partner channel 4 takes the column angle's sine
    out = rope(x)
    theta = rope.angles(5, 5, dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], theta[0].cos())
    torch.testing.assert_close(out[0, 4], theta[4].sin())
    pair_norm = out[0, [0, 4]].norm(dim=0)  # sqrt(cos^2(row angle) + sin^2(column angle)): not 1 off the diagonal
    assert (pair_norm - 1).abs().max() > 0.1
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        rope(torch.zeros(1, 4, 3, 3))
