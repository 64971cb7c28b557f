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


@pytest.mark.parametrize("name", ["wrc", "converse2d", "wrc_tconv"])
def test_untrained_network_is_close_to_bilinear(name):
    """feature_skip: output = bilinear(features) + a correction whose head starts near zero."""
    up = create_upsampler(name, 32, 16).eval()
    feats, image = torch.randn(1, 32, 4, 6), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        out = up(feats, image)
    bilinear = F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False)
    assert ((out - bilinear).norm() / bilinear.norm()).item() < 0.05


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
