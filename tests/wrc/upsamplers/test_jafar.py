"""JAFAR: parameter layout against the reference count, the forward against an explicit formulation, hand cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wrc import create_upsampler

REFERENCE_PARAMETERS = 628_480  # modern_peers.md section 1.1, counted from the original with C = 384
UNUSED = {"value projection": 384 * 128 + 128, "output projection": 128 * 128 + 128, "value RMSNorm": 384}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def inputs(channels=6, grid=(2, 3), patch=14, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *grid, generator=g),
            torch.rand(batch, 3, grid[0] * patch, grid[1] * patch, generator=g))


def tiny(channels=6, **kwargs):
    torch.manual_seed(0)
    return create_upsampler("jafar", channels, 14, dim=16, heads=4, **kwargs).eval()


def test_parameter_count_is_the_reference_less_the_unused_projections():
    up = create_upsampler("jafar", 384, 14)
    assert count(up) + sum(UNUSED.values()) == REFERENCE_PARAMETERS
    breakdown = {  # the reference's per-part counts
        "guidance.image_encoder": 66_944, "guidance.query_encoder": 82_944, "guidance.key_encoder": 82_944,
        "feature_encoder": 115_712, "guidance.rope": 256,
    }
    for name, expected in breakdown.items():
        assert count(up.get_submodule(name)) == expected, name
    assert count(up.sft_scale) + count(up.sft_shift) == 32_768
    attention_block = count(up.query_conv) + count(up.projection)  # the reference's 246,912 less the unused parts
    assert attention_block + sum(UNUSED.values()) == 246_912


def test_forward_equals_the_explicit_formulation():
    """Pooled image queries, GN + conv3x3; SFT keys from L2-normalised features; RMSNorm + in-projection; per-head
    softmax, the heads' mean applied to the raw features, written out by hand."""
    up, (feats, image) = tiny(), inputs()
    size, heads, d = (5, 7), 4, 16
    with torch.no_grad():
        guide = up.guidance
        encoded = guide.rope(guide.image_encoder((image - guide.normalize.mean) / guide.normalize.std))
        q = up.query_conv(F.group_norm(F.adaptive_avg_pool2d(guide.query_encoder(encoded), size), 8))
        k0 = F.group_norm(F.adaptive_avg_pool2d(guide.key_encoder(encoded), feats.shape[-2:]), 8)
        s = up.feature_encoder(feats / feats.norm(dim=1, keepdim=True))
        k = up.sft_scale(s) * k0 + up.sft_shift(s)

        def rms_linear(x, norm, proj):  # (B, D, H, W) -> (B, H*W, D)
            x = x.flatten(2).transpose(1, 2)
            x = x / (x.square().mean(-1, keepdim=True) + torch.finfo(x.dtype).eps).sqrt() * norm.weight
            return x @ proj.weight.T + proj.bias

        qt = rms_linear(q, up.projection.query_norm, up.projection.query_proj).unflatten(-1, (heads, d // heads))
        kt = rms_linear(k, up.projection.key_norm, up.projection.key_proj).unflatten(-1, (heads, d // heads))
        logits = torch.einsum("bqhd,bkhd->bhqk", qt, kt) / (d // heads) ** 0.5
        weights = logits.softmax(dim=-1).mean(dim=1)  # B, Nq, Nk: one map for every channel
        expected = torch.einsum("bqk,bck->bcq", weights, feats.flatten(2)).reshape(2, 6, *size)
        torch.testing.assert_close(up(feats, image, output_size=size), expected, rtol=1e-5, atol=1e-5)


def test_uniform_attention_gives_the_token_mean():
    """With the query projection zeroed every logit is 0: each output pixel is the mean of the raw tokens."""
    up, (feats, image) = tiny(), inputs()
    with torch.no_grad():
        up.projection.query_proj.weight.zero_()
        up.projection.query_proj.bias.zero_()
        out = up(feats, image, output_size=(4, 9))
    torch.testing.assert_close(out, feats.mean(dim=(2, 3), keepdim=True).expand(-1, -1, 4, 9))


def test_output_is_a_convex_combination_of_the_tokens():
    """One-hot token features (C = h * w) read out the attention map: non-negative, summing to one per pixel."""
    grid = (2, 3)
    up = tiny(channels=6)
    feats = torch.eye(6).view(1, 6, *grid).expand(2, -1, -1, -1).contiguous()
    _, image = inputs(grid=grid)
    with torch.no_grad():
        out = up(feats, image, output_size=(6, 9))
    assert (out > 0).all()  # global attention: every token has weight
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 6, 9))


def test_chunking_leaves_the_output_unchanged():
    feats, image = inputs()
    with torch.no_grad():
        torch.testing.assert_close(tiny(chunk_size=5)(feats, image, (6, 9)), tiny()(feats, image, (6, 9)),
                                   rtol=1e-5, atol=1e-6)


def test_non_square_image_and_any_output_size():
    up, (feats, image) = tiny(), inputs(grid=(2, 3))  # a 2 x 3 aspect, 28 x 42 px
    with torch.no_grad():
        assert up(feats, image).shape == (2, 6, 28, 42)
        assert up(feats, image, output_size=(11, 5)).shape == (2, 6, 11, 5)
        assert not torch.allclose(up(feats, image), up(feats, image.flip(-1)))  # the guidance matters


def test_a_training_step_reaches_the_guidance_and_key_paths():
    up, (feats, image) = tiny(), inputs()
    up.train()
    up(feats, image, output_size=(6, 9)).square().mean().backward()
    for name in ("guidance.rope.frequencies", "guidance.image_encoder.0.weight", "sft_scale.weight",
                 "feature_encoder.0.weight", "projection.query_proj.weight", "projection.key_norm.weight"):
        assert up.get_parameter(name).grad.abs().sum() > 0, name


def test_features_of_another_width_are_refused():
    up = tiny(channels=6)
    feats, image = inputs(channels=8)
    with pytest.raises(ValueError, match=r"features must be \(B, 6, h, w\) for this 'jafar' upsampler"):
        up(feats, image)


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 12}, "dim must be a multiple of 8"), ({"dim": 16, "heads": 3}, "heads=3 must divide dim=16"),
    ({"dim": 16, "chunk_size": 0}, "chunk_size must be >= 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_upsampler("jafar", 6, 14, **kwargs)
