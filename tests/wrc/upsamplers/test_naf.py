"""NAF: the parameter count of the reference, the forward against an explicit per-pixel, per-head loop, the
channel-agnostic value split, the guidance cap and the errors for grids smaller than the window."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wrc import DenseFeatureExtractor, create_upsampler
from wrc.upsamplers.base import resize

TINY = {"dim": 32, "kernel": 3}  # two branches of 16 channels, heads of 8: the architecture at a tenth of the width


def make_inputs(channels: int, grid: tuple[int, int], patch: int = 4, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *grid, generator=g),
            torch.rand(batch, 3, grid[0] * patch, grid[1] * patch, generator=g))


def test_parameter_count_matches_the_reference():
    """662,528 for the defaults (modern_peers.md 4.1): pixel branch 67,584, context branch 594,944; RoPE and
    attention have none, and the count does not depend on the backbone's channels."""
    naf = create_upsampler("naf", 384, 14)
    assert sum(p.numel() for p in naf.pixel_branch.parameters()) == 67_584
    assert sum(p.numel() for p in naf.context_branch.parameters()) == 594_944
    assert sum(p.numel() for p in naf.parameters()) == 662_528
    assert sum(p.numel() for p in create_upsampler("naf", 768, 16).parameters()) == 662_528


def loop_oracle(q: torch.Tensor, v: torch.Tensor, grid: tuple[int, int], kernel: int, heads: int) -> torch.Tensor:
    """NAF's attention written out: keys = block means of the (rotated) queries over each token's pixels; each
    pixel's softmax over the kernel x kernel tokens around its parent token (shifted inside the grid), per head,
    applied to that head's C / heads value channels."""
    b, d, ho, wo = q.shape
    h, w = grid
    ry, rx = ho // h, wo // w  # integer ratios in this test
    k = q.reshape(b, d, h, ry, w, rx).mean(dim=(3, 5))
    c = v.shape[1]
    dh, m = d // heads, c // heads
    out = torch.zeros(b, c, ho, wo, dtype=q.dtype)
    for y in range(ho):
        r0 = min(max(y // ry - kernel // 2, 0), h - kernel)
        for x in range(wo):
            c0 = min(max(x // rx - kernel // 2, 0), w - kernel)
            query = q[:, :, y, x].reshape(b, heads, dh, 1)
            keys = k[:, :, r0:r0 + kernel, c0:c0 + kernel].reshape(b, heads, dh, -1)
            weights = torch.softmax((query * keys).sum(2) / math.sqrt(dh), dim=-1)  # B, heads, k*k
            values = v[:, :, r0:r0 + kernel, c0:c0 + kernel].reshape(b, heads, m, -1)  # head n: channels n m ...
            out[:, :, y, x] = (weights[:, :, None] * values).sum(-1).reshape(b, c)
    return out


def test_forward_equals_the_per_pixel_per_head_loop():
    naf = create_upsampler("naf", 8, 4, **TINY).double().eval()
    feats, image = make_inputs(8, (4, 5), batch=2)
    feats, image = feats.double(), image.double()
    size = (8, 15)  # ratios 2 and 3
    with torch.no_grad():
        out = naf(feats, image, output_size=size)
        expected = loop_oracle(naf.queries(image, size), feats, (4, 5), kernel=3, heads=4)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_heads_split_the_channels_for_any_channel_count():
    """One model, two channel counts: doubling every channel (so each head's group holds two copies of the
    4-channel input's channel) doubles every output channel: head n's weights serve channels [n m, (n + 1) m)."""
    naf = create_upsampler("naf", 4, 4, **TINY).eval()
    feats, image = make_inputs(4, (3, 4))
    with torch.no_grad():
        four = naf(feats, image, output_size=(9, 10))
        eight = naf(feats.repeat_interleave(2, dim=1), image, output_size=(9, 10))
    assert four.shape == (1, 4, 9, 10) and eight.shape == (1, 8, 9, 10)
    torch.testing.assert_close(eight, four.repeat_interleave(2, dim=1))
    heads_differ = (four[:, :1] - four[:, 1:2]).abs().max() > 1e-3  # per-head weights, not one averaged map
    same_value = naf(feats[:, :1].expand(-1, 4, -1, -1).contiguous(), image, output_size=(9, 10))
    assert heads_differ and (same_value[:, 0] - same_value[:, 1]).abs().max() > 1e-4


def test_output_is_a_local_convex_combination_of_tokens():
    naf = create_upsampler("naf", 4, 4, **TINY).eval()
    feats, image = make_inputs(4, (6, 7))
    with torch.no_grad():
        out = naf(feats, image, output_size=(12, 14))
        constant = naf(torch.full_like(feats, 2.5), image, output_size=(12, 14))
        moved = feats.clone()
        moved[..., 5, 6] += 10.0  # the bottom-right token: outside every 3 x 3 window of the top-left pixels
        changed = naf(moved, image, output_size=(12, 14)) != out
    torch.testing.assert_close(constant, torch.full_like(constant, 2.5))
    assert not changed[..., :8, :8].any()  # parent rows/columns <= 3: windows end at token 4
    assert changed[..., -2:, -2:].all()


def test_guidance_is_capped_at_four_times_the_output():
    naf = create_upsampler("naf", 4, 4, **TINY).eval()
    feats, _ = make_inputs(4, (3, 4))
    big = torch.rand(1, 3, 96, 128)  # 8x the 12 x 16 output
    with torch.no_grad():
        capped = naf(feats, big, output_size=(12, 16))
        four_x = F.interpolate(big, size=(48, 64), mode="bilinear", antialias=True)
        pre_resized = naf(feats, four_x, output_size=(12, 16))
        small = naf(feats, resize(big, (24, 32)), output_size=(12, 16))  # 2x: used as given
    torch.testing.assert_close(capped, pre_resized)
    assert (small - capped).abs().max() > 1e-4


def test_non_square_image_and_default_size_with_the_paper_kernel():
    naf = create_upsampler("naf", 16, 2, dim=32).eval()  # kernel 9; the patch size plays no part in NAF
    feats, image = make_inputs(16, (10, 15), patch=2)  # 2 x 3 aspect, 20 x 30 px
    with torch.no_grad():
        assert naf(feats, image).shape == (1, 16, 20, 30)
        assert naf(feats, image, output_size=(20, 31)).shape == (1, 16, 20, 31)


def test_train_mode_rescales_the_rope_eval_mode_is_deterministic():
    naf = create_upsampler("naf", 4, 4, **TINY)
    feats, image = make_inputs(4, (3, 4))
    with torch.no_grad():
        torch.manual_seed(0)
        a = naf.train()(feats, image, output_size=(6, 8))
        b = naf(feats, image, output_size=(6, 8))
        c, d = naf.eval()(feats, image, output_size=(6, 8)), naf(feats, image, output_size=(6, 8))
    assert (a - b).abs().max() > 1e-6
    torch.testing.assert_close(c, d)


def test_bf16_autocast_keeps_the_feature_dtype():
    naf = create_upsampler("naf", 4, 4, **TINY).eval()
    feats, image = make_inputs(4, (3, 4))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = naf(feats, image, output_size=(6, 8))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_grid_smaller_than_the_window_is_a_clear_error():
    naf = create_upsampler("naf", 8, 14, dim=32)
    feats, image = make_inputs(8, (8, 12), patch=14)
    with pytest.raises(ValueError, match=r"9 x 9 neighbourhood needs a token grid of at least 9 per side; got 8 x 12"):
        naf(feats, image)


def test_channels_not_divisible_by_the_heads_are_refused():
    naf = create_upsampler("naf", 8, 4, **TINY)
    with pytest.raises(ValueError, match="divisible by heads=4"):
        naf(*make_inputs(6, (3, 4)))
    with pytest.raises(ValueError, match="heads=4 must divide in_channels=6"):
        create_upsampler("naf", 6, 4)
    with pytest.raises(ValueError, match="kernel must be an odd"):
        create_upsampler("naf", 8, 4, kernel=4)


def test_base_checks_still_apply():
    naf = create_upsampler("naf", 8, 4, **TINY)
    feats, image = make_inputs(8, (3, 4))
    with pytest.raises(ValueError, match=r"image must be float RGB in \[0, 1\]"):
        naf(feats, image * 255)
    with pytest.raises(ValueError, match=r"image must be \(B=1, 3, H, W\)"):
        naf(feats, image[:, :1])


def test_extractor_end_to_end(test_vit):
    extractor = DenseFeatureExtractor(test_vit, create_upsampler("naf", 64, 16, **TINY)).eval()
    with torch.no_grad():
        assert extractor(torch.rand(1, 3, 48, 80), output_size=(24, 40)).shape == (1, 64, 24, 40)
