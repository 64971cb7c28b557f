"""The modern upsamplers' shared blocks against hand-computed cases and the reference's parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wrc.layers.encoders import ConvEncoder, GNSiLUBlock
from wrc.layers.fourier import FourierFeatures, coordinate_grid, minmax_scale
from wrc.layers.local_attention import UPLIFT_OFFSETS, local_softmax_pool
from wrc.layers.unification import FeatureUnification
from wrc.losses import cos_mse


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_encoder_parameter_counts_match_the_reference():
    # modern_peers.md: JAFAR's image encoder 66,944; NAF's pixel branch 67,584 and context branch 594,944
    assert count(ConvEncoder(3, 128, 1)) == 66_944
    assert count(ConvEncoder(3, 128, 1, residual=False, bias=True)) == 67_584
    assert count(ConvEncoder(3, 128, 3, residual=False, bias=True)) == 594_944


def test_residual_block_is_identity_when_its_last_conv_is_zero():
    block = GNSiLUBlock(16, 3)
    torch.nn.init.zeros_(block.body[-1].weight)
    x = torch.randn(2, 16, 5, 6)
    torch.testing.assert_close(block(x), x)
    with pytest.raises(ValueError, match="multiple of 8"):
        GNSiLUBlock(12)


def test_fourier_features_hand_computed_and_phase_layout():
    ff = FourierFeatures(num_inputs=2, num_frequencies=3, low=0.0, high=math.log(4))  # f = 1, 2, 4
    with torch.no_grad():
        ff.phases.copy_(torch.arange(12, dtype=torch.float32).view(2, 2, 3) / 10)
    v = torch.tensor([0.3, -0.7]).view(1, 2, 1, 1)
    out = ff(v).flatten()
    sin_phase, cos_phase = (torch.arange(6) / 10), (torch.arange(6, 12) / 10)  # row-major flattening, channel order
    expected = []
    for trig, phase in ((torch.sin, sin_phase), (torch.cos, cos_phase)):
        for k, f in enumerate((1.0, 2.0, 4.0)):
            for j in range(2):
                expected.append(trig(v.flatten()[j] * f + phase[2 * k + j]))
    torch.testing.assert_close(out, torch.stack(expected))
    assert ff.out_channels == 12 and count(FourierFeatures(5, 20)) == 200  # LoftUp: 200 Fourier biases


def test_coordinates_and_minmax_scaling():
    grid = coordinate_grid(3, 2, torch.zeros(()))
    assert grid[0, 0].tolist() == [[-1, -1], [0, 0], [1, 1]] and grid[0, 1].tolist() == [[-1, 1]] * 3
    image = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    image[1, 0, 0, 0] = 3.0
    scaled = minmax_scale(image)  # channel 0 ranges over [0, 3] across the batch
    assert scaled[1, 0, 0, 0] == pytest.approx(0.5) and scaled[0, 0, 0, 0] == pytest.approx(-0.5)
    assert minmax_scale(image, over_batch=False)[0].abs().max() == pytest.approx(0.5)  # a constant image: -0.5


def test_feature_unification_any_channel_count_and_border_normalisation():
    lfu = FeatureUnification(filters=6, kernel_size=3, channel_chunk=2)
    for channels in (3, 7, 384):
        out = lfu(torch.randn(2, channels, 5, 4))
        assert out.shape == (2, 6, 5, 4)
        torch.testing.assert_close(out.sum(1), torch.ones(2, 5, 4))  # a mean of softmaxes sums to one
    # an independent statement with explicit loops over channels and filters
    x = torch.randn(1, 3, 4, 4)
    xn = F.normalize(x, dim=1)
    counts = F.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3), padding=1)
    assert counts[0, 0, 0, 0] == 4 and counts[0, 0, 1, 1] == 9
    responses = torch.stack([torch.cat([F.conv2d(xn[:, c:c + 1], lfu.bank[m:m + 1], padding=1) for m in range(6)], 1)
                             / counts for c in range(3)])  # C, 1, M, h, w
    expected = responses.softmax(dim=2).mean(0)
    torch.testing.assert_close(lfu(x), expected)
    assert count(FeatureUnification()) + count(torch.nn.Sequential(GNSiLUBlock(128), GNSiLUBlock(128))) == 69_760


def test_local_softmax_pool_hand_computed():
    values = torch.arange(12, dtype=torch.float64).view(1, 1, 3, 4)
    logits = torch.full((1, len(UPLIFT_OFFSETS), 6, 8), -1e9, dtype=torch.float64)
    logits[:, 4] = 0.0  # offset (0, 0) only: nearest upsampling of the values
    torch.testing.assert_close(local_softmax_pool(logits, values),
                               values.repeat_interleave(2, -2).repeat_interleave(2, -1))
    uniform = torch.zeros(1, len(UPLIFT_OFFSETS), 6, 8, dtype=torch.float64)
    out = local_softmax_pool(uniform, values)
    padded = F.pad(values, (2, 2, 2, 2), mode="replicate")[0, 0]
    corner = sum(padded[2 + dy, 2 + dx] for dy, dx in UPLIFT_OFFSETS) / len(UPLIFT_OFFSETS)
    assert out[0, 0, 0, 0].item() == pytest.approx(corner.item()) and out[0, 0, 1, 1] == out[0, 0, 0, 0]
    with pytest.raises(ValueError, match="integer multiple"):
        local_softmax_pool(uniform[..., :7], values)
    with pytest.raises(ValueError, match="one per offset"):
        local_softmax_pool(uniform[:, :5], values)


def test_cos_mse_known_values():
    target = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    assert cos_mse(target, target).item() == pytest.approx(0.0, abs=1e-6)
    # pred = -target: cosine term 2; scaled by the target's range [1, 3]: pred -> (-1-1)/2, (-3-1)/2 = -1, -2;
    # target -> 0, 1; MSE = (1 + 9) / 2 = 5
    assert cos_mse(-target, target).item() == pytest.approx(2 + 5, rel=1e-5)
