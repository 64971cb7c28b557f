"""WRC, Converse2D and the transposed-conv ablation: the network, its layers, and the training recipe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wrc import create_upsampler
from wrc.layers.reverse_conv import BoundedMap, ReverseConv2d, ReverseKernel, WeightedReverseConv2d
from wrc.objectives import create_objective
from wrc.objectives.wrc_multicrop import cosine_mse
from wrc.ops.reverse_conv import energy, weighted_reverse_conv


def test_parameter_count_matches_the_paper():
    """The paper reports +3.98M parameters for ViT-S (C = 384)."""
    count = sum(p.numel() for p in create_upsampler("wrc", 384, 14).parameters())
    assert abs(count - 3_979_216) / 3_979_216 < 0.03


def untrained_output_oracle(feats: torch.Tensor, output_solve: bool) -> torch.Tensor:
    """What an untrained network returns, by hand: bilinear (the head starts near zero), and with the output solve
    at its initial weights (wL = wH = 1, box kernel) each 2x2 block moved by 0.25 / (1 + 4 / 16) = 0.2 of its
    residual to the token, the block's share of the minimiser of (t - mean x)^2 + |x - z|^2."""
    bilinear = F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False)
    if not output_solve:
        return bilinear
    residual = feats - F.avg_pool2d(bilinear, 2)
    return bilinear + 0.2 * F.interpolate(residual, scale_factor=2, mode="nearest")


@pytest.mark.parametrize(("name", "kwargs", "output_solve"), [
    ("wrc", {}, True), ("converse2d", {}, True), ("wrc_tconv", {}, False),
    ("wrc", {"output_solve": False}, False), ("converse2d", {"output_solve": False}, False)])
def test_untrained_network_matches_its_hand_computed_output(name, kwargs, output_solve):
    """feature_skip: output = bilinear(features) + a correction whose head starts near zero; the output solve,
    where the network has one, then pulls it a known step toward the tokens."""
    up = create_upsampler(name, 32, 16, **kwargs).eval()
    feats, image = torch.randn(1, 32, 4, 6), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        out = up(feats, image)
    expected = untrained_output_oracle(feats, output_solve)
    assert ((out - expected).norm() / expected.norm()).item() < 0.05
    if output_solve:  # the step is visible: the output is closer to the tokens than bilinear is
        bilinear = untrained_output_oracle(feats, False)
        assert ((F.avg_pool2d(out, 2) - feats).norm() < 0.9 * (F.avg_pool2d(bilinear, 2) - feats).norm())


def test_wider_kernel_uses_the_iterative_solver_and_trains():
    up = create_upsampler("wrc", 16, 14, kernel_size=4, iterations=5)
    feats, image = torch.randn(2, 16, 3, 4, requires_grad=True), torch.rand(2, 3, 42, 56)
    up(feats, image).square().mean().backward()
    assert up.layer.kernel.logits.grad.abs().sum() > 0 and feats.grad.abs().sum() > 0


def test_kernels_are_positive_and_normalised():
    kernel = ReverseKernel(5, 3)
    with torch.no_grad():
        kernel.logits.normal_(std=3.0)
    k = kernel()
    assert (k > 0).all() and torch.allclose(k.sum(dim=(-2, -1)), torch.ones(5))


def test_bounded_weights_stay_in_range():
    head = BoundedMap(4, 4, low=0.05, high=4.0, init=1.0)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(head(x), torch.ones(2, 4, 5, 5))  # starts at the constant init
    with torch.no_grad():
        head.conv.weight.normal_(std=100.0)
    out = head(x)
    assert out.min() >= 0.05 and out.max() <= 4.0


def test_weighted_layer_returns_the_minimiser_of_its_weights():
    layer = WeightedReverseConv2d(6, 3, kernel_size=2)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y, z, guide = torch.randn(1, 6, 4, 5), torch.randn(1, 6, 8, 10), torch.randn(1, 3, 8, 10)
    with torch.no_grad():
        x = layer(y, z, guide)
        w_low, w_high = layer.weights(y, z, guide)
        kernel = layer.kernel()
        e = energy(x, y, z, kernel, 2, w_low, w_high)
        for _ in range(3):
            assert (e <= energy(x + 0.01 * torch.randn_like(x), y, z, kernel, 2, w_low, w_high) + 1e-5).all()
        torch.testing.assert_close(x, weighted_reverse_conv(y, z, kernel, 2, w_low, w_high))


def test_shared_weight_maps_with_a_low_guide_solve_each_block_by_hand():
    """weight_maps=1: one wL and one wH map for every channel, wL read from y and the LR guide; for k = s each 2x2
    block's minimiser is x_n = z_n + (wL k_n / wH_n) r / (1 + wL sum_m k_m^2 / wH_m), r = y - sum_m k_m z_m."""
    layer = WeightedReverseConv2d(5, 3, kernel_size=2, weight_maps=1, low_guide_channels=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y, z = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 6, 8)
    guide, low_guide = torch.randn(2, 3, 6, 8), torch.randn(2, 4, 3, 4)
    with torch.no_grad():
        w_low, w_high = layer.weights(y, z, guide, low_guide)
        assert w_low.shape == (2, 1, 3, 4) and w_high.shape == (2, 1, 6, 8)
        assert not torch.allclose(w_low, layer.weights(y, z, guide, -low_guide)[0])
        x, k = layer(y, z, guide, low_guide), layer.kernel()  # k: 5, 2, 2
    for b, c, i, j in [(0, 0, 0, 0), (1, 4, 2, 3), (0, 2, 1, 2)]:
        zb, wb, kb = z[b, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2], w_high[b, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2], k[c]
        wl, r = w_low[b, 0, i, j], y[b, c, i, j] - (kb * zb).sum()
        expected = zb + (wl * kb / wb) * r / (1 + wl * (kb**2 / wb).sum())
        torch.testing.assert_close(x[b, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])  # either solve path
def test_float64_layer_solves_in_float64(layout):
    """A float64 layer keeps float64 through its weights, kernel and solve (half precision alone is promoted):
    its output is the minimiser to float64 rounding, which a float32 solve would miss by ~1e-7."""
    torch.manual_seed(0)
    layer = WeightedReverseConv2d(6, 3, kernel_size=2, weight_maps=1).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y, z, guide = (torch.randn(size, dtype=torch.float64).contiguous(memory_format=layout)
                   for size in ((1, 6, 4, 5), (1, 6, 8, 10), (1, 3, 8, 10)))
    with torch.no_grad():
        x, (w_low, w_high), k = layer(y, z, guide), layer.weights(y, z, guide), layer.kernel()
    assert x.dtype == w_low.dtype == k.dtype == torch.float64
    zb, wb = z[0, :, :2, :2], w_high[0, 0, :2, :2]  # block (0, 0) of every channel, by hand
    r = y[0, :, 0, 0] - (k * zb).sum((1, 2))
    gain = w_low[0, 0, 0, 0] * r / (1 + w_low[0, 0, 0, 0] * (k.square() / wb).sum((1, 2)))
    torch.testing.assert_close(x[0, :, :2, :2], zb + k / wb * gain[:, None, None], rtol=1e-13, atol=1e-13)


def test_bad_weight_maps_are_rejected():
    with pytest.raises(ValueError, match="weight_maps"):
        WeightedReverseConv2d(6, 3, weight_maps=2)


def test_output_solve_can_be_switched_off_and_costs_few_parameters():
    with_solve, without = create_upsampler("wrc", 384, 14), create_upsampler("wrc", 384, 14, output_solve=False)
    assert without.output_solver is None
    extra = sum(p.numel() for p in with_solve.parameters()) - sum(p.numel() for p in without.parameters())
    assert extra == 384 * 4 + 2 * ((384 + 32) * 9 + 1)  # kernel taps + the two 3x3 weight heads


def test_converse2d_layer_keeps_alpha_positive():
    layer = ReverseConv2d(3, kernel_size=2)
    with torch.no_grad():
        layer.alpha_raw.fill_(-50.0)  # softplus -> 0: the floor alpha_min keeps the solve well posed
    out = layer(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 8, 8))
    assert torch.isfinite(out).all()


class TestWRCMulticrop:
    def test_cosine_mse_hand_computed(self):
        target = torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1, 1)
        assert cosine_mse(target, target).item() == pytest.approx(0.0, abs=1e-6)
        pred = torch.tensor([0.0, 2.0, 1.0]).view(1, 3, 1, 1)
        cos = 1 - (0 + 2 + 2) / (5**0.5 * 5**0.5)
        mse = ((0 - 0) ** 2 + (1 - 0.5) ** 2 + (0.5 - 1) ** 2) / 3  # normalised by the target's range [0, 2]
        assert cosine_mse(pred, target).item() == pytest.approx(cos + mse, rel=1e-5)

    def test_terms_weights_and_targets(self, test_vit):
        torch.manual_seed(0)
        images = torch.rand(2, 3, 64, 64)
        up = create_upsampler("wrc", 64, 16)
        losses = create_objective("wrc_multicrop", num_crops=2)(test_vit, up, images)
        assert {"loss_local", "loss_global", "loss_consistency"} <= set(losses)
        expected = losses["loss_local"] + losses["loss_global"] + losses["loss_consistency"]
        assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
        losses["loss"].backward()
        only_global = create_objective("wrc_multicrop", local_weight=0, consistency_weight=0, global_weight=2.0)
        out = only_global(test_vit, up, images)
        assert set(out) == {"loss_global", "loss"}
        assert out["loss"].item() == pytest.approx(2 * out["loss_global"].item(), rel=1e-6)

    def test_global_target_is_the_real_high_resolution_image(self, test_vit):
        """An upsampler that returns F(I) exactly must score zero on the global term."""
        images = torch.rand(1, 3, 64, 64)

        class Cheat(torch.nn.Module):
            def __call__(self, feats, image, output_size=None):
                return test_vit(images)

        out = create_objective("wrc_multicrop", local_weight=0, consistency_weight=0)(test_vit, Cheat(), images)
        assert out["loss_global"].item() == pytest.approx(0.0, abs=1e-6)

    def test_local_crops_match_their_window(self, test_vit):
        """A cheat that returns F(I) scores ~0 on crops whose tokens see the same pixels (no position mixing)."""
        torch.manual_seed(0)
        images = torch.rand(1, 3, 64, 64)
        backbone = type(test_vit)("test_vit", "random", layer=0, final_norm=False)
        with torch.no_grad():
            backbone.model.pos_embed.zero_()
            for blk in backbone.model.blocks:
                blk.attn.proj.weight.zero_()
                blk.attn.proj.bias.zero_()

        class Cheat(torch.nn.Module):
            def __call__(self, feats, image, output_size=None):
                return backbone(images)

        out = create_objective("wrc_multicrop", num_crops=3, global_weight=0, consistency_weight=0)(
            backbone, Cheat(), images)
        assert out["loss_local"].item() == pytest.approx(0.0, abs=1e-5)

    def test_image_size_must_fit_the_patch_grid(self, test_vit):
        with pytest.raises(ValueError, match="divisible by 2 x patch size = 32"):
            create_objective("wrc_multicrop")(test_vit, create_upsampler("wrc", 64, 16), torch.rand(1, 3, 48, 48))
