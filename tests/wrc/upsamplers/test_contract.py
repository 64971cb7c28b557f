"""The Upsampler contract, run over every registered upsampler, plus method-specific checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.toy_backbone import ToyBackbone
from wrc import DenseFeatureExtractor, create_upsampler, list_upsamplers
from wrc.upsamplers import Upsampler, register_upsampler

ALL = list_upsamplers()
FAST = {  # per-method settings for the 3 x 5 token grid, at a unit-test budget
    "featup_implicit": {"steps": 5, "num_jitters": 8, "progress": False},  # per-image fits: a short budget
    "upsample_anything": {"steps": 2},  # per-image fits: a short budget
    "naf": {"kernel": 3},  # 3 x 5 tokens are fewer than the 9 x 9 window (an error: tests/wrc/upsamplers/test_naf.py)
    "uplift": {"encoder_channels": [4, 8, 8, 12, 16], "decoder_channels": 20},  # full-resolution encoder: thinner
}


def _inputs(channels: int, patch: int, grid=(3, 5), batch: int = 2):
    torch.manual_seed(0)
    return torch.randn(batch, channels, *grid), torch.rand(batch, 3, grid[0] * patch, grid[1] * patch)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("patch", [8, 14, 16])
class TestContract:
    def test_cardinality(self, name, patch):
        up = create_upsampler(name, 24, patch, **FAST.get(name, {})).eval()
        feats, image = _inputs(24, patch)
        backbone = ToyBackbone(24, patch) if up.needs_backbone else None
        native = up(feats, image, backbone=backbone)
        expected = (3 * up.scale, 5 * up.scale) if up.scale else image.shape[-2:]
        assert native.shape == (2, 24, *expected)
        for size in [(6, 10), (12, 20), (7, 9), (image.shape[-2], image.shape[-1])]:
            out = up(feats, image, output_size=size, backbone=backbone)
            assert out.shape == (2, 24, *size) and torch.isfinite(out).all()

    def test_backward_reaches_every_parameter(self, name, patch):
        up = create_upsampler(name, 24, patch, **FAST.get(name, {})).train()
        if up.needs_backbone:
            pytest.skip("backbone-side method: recomputes features from the image, nothing to train")
        feats, image = _inputs(24, patch)
        feats.requires_grad_(True)
        size = (12, 20) if up.scale else (48, 80)  # 16x for stacks of 2x layers, so every layer is used
        up(feats, image, output_size=size).square().mean().backward()
        assert feats.grad is not None and feats.grad.abs().sum() > 0
        for pname, param in up.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, pname


class TestInterpolation:
    @pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
    def test_matches_interpolate_with_half_pixel_centres(self, mode):
        feats, image = _inputs(8, 16)
        out = create_upsampler(mode, 8, 16)(feats, image, output_size=(9, 15))
        align = None if mode == "nearest" else False
        torch.testing.assert_close(out, F.interpolate(feats, size=(9, 15), mode=mode, align_corners=align))

    def test_default_output_is_the_pixel_grid(self):
        feats, image = _inputs(8, 14)
        assert create_upsampler("bilinear", 8, 14)(feats, image).shape[-2:] == (42, 70)

    def test_constant_features_stay_constant(self):
        feats = torch.full((1, 4, 3, 3), 2.5)
        out = create_upsampler("bilinear", 4, 8)(feats, torch.rand(1, 3, 24, 24), output_size=(24, 24))
        torch.testing.assert_close(out, torch.full_like(out, 2.5))


class TestLiFT:
    def test_parameter_count_matches_the_paper(self):
        """LiFT reports 1.2M parameters for C=384 (1,187,280 counted from the original layer shapes)."""
        count = sum(p.numel() for p in create_upsampler("lift", 384, 16).parameters())
        assert abs(count - 1_187_280) / 1_187_280 < 0.01

    def test_same_parameters_for_every_patch_size(self):
        counts = {sum(p.numel() for p in create_upsampler("lift", 64, p).parameters()) for p in (8, 14, 16)}
        assert len(counts) == 1

    def test_4x_is_two_steps_with_rescaled_guidance(self):
        up = create_upsampler("lift", 16, 14).eval()
        feats, image = _inputs(16, 14, grid=(4, 6), batch=1)
        with torch.no_grad():
            once = up.upsample_step(feats, image)
            big = F.interpolate(image, size=(8 * 14, 12 * 14), mode="bilinear", align_corners=False, antialias=True)
            expected = up.upsample_step(once, big)
            torch.testing.assert_close(up(feats, image, output_size=(16, 24)), expected)

    def test_non_native_size_is_one_step_then_bilinear(self):
        up = create_upsampler("lift", 16, 16).eval()
        feats, image = _inputs(16, 16, grid=(4, 4), batch=1)
        with torch.no_grad():
            step = up.upsample_step(feats, image)  # 8 x 8
            expected = F.interpolate(step, size=(12, 10), mode="bilinear", align_corners=False)
            torch.testing.assert_close(up(feats, image, output_size=(12, 10)), expected)

    def test_guidance_changes_the_output(self):
        up = create_upsampler("lift", 16, 16).eval()
        feats, image = _inputs(16, 16, batch=1)
        with torch.no_grad():
            assert not torch.allclose(up(feats, image), up(feats, 1 - image))


class TestErrors:
    def test_unknown_name(self):
        with pytest.raises(ValueError, match="unknown upsampler .* 'liftt'; available: .*lift"):
            create_upsampler("liftt", 8, 16)

    def test_bad_keyword(self):
        with pytest.raises(TypeError, match="bad arguments for upsampler 'lift'"):
            create_upsampler("lift", 8, 16, image_chanels=3)

    def test_wrong_channel_count(self):
        up = create_upsampler("lift", 32, 16)
        with pytest.raises(ValueError, match=r"features must be \(B, 32, h, w\).*got shape \(2, 24, 3, 5\)"):
            up(*_inputs(24, 16))

    def test_wrong_image(self):
        feats, _ = _inputs(8, 16)
        with pytest.raises(ValueError, match=r"image must be \(B=2, 3, H, W\)"):
            create_upsampler("bilinear", 8, 16)(feats, torch.rand(2, 1, 48, 80))

    def test_bad_output_size(self):
        with pytest.raises(ValueError, match="output_size must be two positive ints"):
            create_upsampler("bilinear", 8, 16)(*_inputs(8, 16), output_size=(0, 4))

    def test_extractor_rejects_a_backbone_of_another_width(self, test_vit):
        with pytest.raises(ValueError, match="expects 384-channel features but backbone test_vit has embed_dim=64"):
            DenseFeatureExtractor(test_vit, create_upsampler("lift", 384, 16))

    def test_duplicate_registration(self):
        class Other(Upsampler):
            name = "lift"

        with pytest.raises(ValueError, match="already registered"):
            register_upsampler(Other)


def test_extractor_end_to_end(test_vit):
    extractor = DenseFeatureExtractor(test_vit, create_upsampler("lift", 64, 16)).eval()
    image = torch.rand(1, 3, 48, 80)
    with torch.no_grad():
        assert extractor(image).shape == (1, 64, 6, 10)
        assert extractor(image, output_size=(48, 80)).shape == (1, 64, 48, 80)
