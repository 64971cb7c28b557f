"""UPLiFT: the reference's parameter count, one step against the architecture written out with explicit loops and
strided subsampling, the step/size policy, and fast mode (BatchNorm folded, channels_last) against the normal
mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wrc import create_upsampler
from wrc.layers.local_attention import UPLIFT_OFFSETS
from wrc.upsamplers.uplift import ConvBNReLU, steps_to_reach

TINY = {"encoder_channels": (4, 8, 8, 12, 16), "decoder_channels": 20}


def make_inputs(channels: int, grid: tuple[int, int], patch: int = 16, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *grid, generator=g),
            torch.rand(batch, 3, grid[0] * patch, grid[1] * patch, generator=g))


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters away from their identity initialisation (so folding matters)."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.bias.copy_(torch.randn(n, generator=g) * 0.1)


def test_parameter_count_matches_the_reference():
    """789,521 for DINOv2-S/14 (modern_peers.md 5.1): encoder 283,904, decoder 504,512, attender 1,105."""
    up = create_upsampler("uplift", 384, 14)
    count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    assert count(up.encoder) == 283_904
    assert count(up.decode_in, up.decode_up, up.decode_out) == 504_512
    assert count(up.attender) == 1_105
    assert count(up) == 789_521


def attender_oracle(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Output pixel (Y, X): sum over the 17 offsets of softmax(logits) times values at the parent (Y // 2, X // 2)
    plus the offset, coordinates clamped into the grid (replicate padding); written as loops."""
    b, c, h, w = values.shape
    out = torch.zeros(b, c, 2 * h, 2 * w, dtype=values.dtype)
    weights = logits.softmax(dim=1)
    for y in range(2 * h):
        for x in range(2 * w):
            for d, (dy, dx) in enumerate(UPLIFT_OFFSETS):
                i, j = min(max(y // 2 + dy, 0), h - 1), min(max(x // 2 + dx, 0), w - 1)
                out[:, :, y, x] += weights[:, d, y, x, None] * values[:, :, i, j]
    return out


def test_one_step_equals_the_architecture_written_out():
    """Encoder maps subsampled by striding, the three decoder blocks, the attender's residual logits and its
    values = the step's input, against the upsampler's own step (float64, eval)."""
    up = create_upsampler("uplift", 6, 14, **TINY).double().eval()
    randomise_batchnorm(up)
    feats, image = make_inputs(6, (2, 3), patch=14, batch=1)
    feats, image = feats.double(), image.double()
    with torch.no_grad():
        first = up(feats, image, output_size=(4, 6))
        encoder_in = up.normalize(F.interpolate(image, size=(32, 48), mode="bilinear", align_corners=False))
        maps = [encoder_in]
        for block in up.encoder:
            maps.append(block(maps[-1]))  # full resolution: 16 px per token for patch 14
        e3, e4 = maps[-2], maps[-1]
        g = up.decode_in(torch.cat([feats, e4[..., ::16, ::16]], dim=1))
        g = up.decode_up(g) + F.interpolate(g, scale_factor=2, mode="bilinear", align_corners=True)
        g = up.decode_out(torch.cat([g, e3[..., ::8, ::8]], dim=1))
        logits = up.attender(g) + g[:, :17]
        expected = attender_oracle(logits, feats)
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-10)


def test_every_step_is_a_convex_combination_of_its_input():
    up = create_upsampler("uplift", 6, 16, **TINY).eval()
    feats, image = make_inputs(6, (3, 4))
    with torch.no_grad():
        steps = up.iterate(feats, image, 3)
        constant = up(torch.full_like(feats, -1.5), image, output_size=(24, 32))
        one_hot = torch.zeros_like(feats)
        one_hot[..., 0, 0] = 1.0
        spread = up.iterate(one_hot, image, 1)[0]
    assert [tuple(s.shape[-2:]) for s in steps] == [(6, 8), (12, 16), (24, 32)]
    for before, after in zip([feats, *steps[:-1]], steps, strict=True):
        assert after.amin() >= before.amin() - 1e-5 and after.amax() <= before.amax() + 1e-5
    torch.testing.assert_close(constant, torch.full_like(constant, -1.5))
    assert (spread >= 0).all() and (spread[..., 6:, :] == 0).all() and (spread[..., :, 6:] == 0).all()
    assert (spread[..., :6, :6] > 0).all()  # parents within 2 tokens of token (0, 0) reach it


def test_iterate_equals_asking_for_each_size():
    """The encoder runs once for all steps; each intermediate equals a fresh call at its size."""
    up = create_upsampler("uplift", 6, 14, **TINY).eval()
    feats, image = make_inputs(6, (2, 3), patch=14)
    with torch.no_grad():
        steps = up.iterate(feats, image, 3)
        for k, out in enumerate(steps, start=1):
            torch.testing.assert_close(up(feats, image, output_size=(2 * 2**k, 3 * 2**k)), out)


def test_any_size_is_the_fewest_steps_then_one_resize():
    """Patch 14, 2 x 3 tokens to the 28 x 42 pixel grid: 4 steps to 32 x 48 (the 16/14 pre-scale), then down."""
    assert steps_to_reach((32, 32), (448, 448)) == 4
    assert steps_to_reach((3, 5), (7, 9)) == 2 and steps_to_reach((3, 5), (3, 5)) == 0
    up = create_upsampler("uplift", 6, 14, **TINY).eval()
    feats, image = make_inputs(6, (2, 3), patch=14)
    with torch.no_grad():
        native = up(feats, image)
        fourth = up.iterate(feats, image, 4)[-1]
        odd = up(feats, image, output_size=(10, 17))
    assert native.shape == (2, 6, 28, 42) and odd.shape == (2, 6, 10, 17)
    torch.testing.assert_close(native, F.interpolate(fourth, size=(28, 42), mode="bilinear", antialias=True))


@pytest.mark.parametrize("patch, pixels", [(14, 16), (16, 16), (8, 8)])
def test_encoder_runs_at_a_power_of_two_pixels_per_token(patch, pixels):
    up = create_upsampler("uplift", 6, patch, **TINY).eval()
    seen = []
    up.encoder[0].register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape[-2:])))
    feats, image = make_inputs(6, (2, 3), patch=patch, batch=1)
    with torch.no_grad():
        up(feats, image, output_size=(8, 12))
    assert seen == [(2 * pixels, 3 * pixels)]


def test_fast_mode_equals_the_normal_mode():
    """Default widths, float32: BatchNorm folded (no BatchNorm runs) and channels_last, outputs equal to 1e-5."""
    up = create_upsampler("uplift", 24, 14).eval()
    randomise_batchnorm(up)
    feats, image = make_inputs(24, (2, 3), patch=14)
    with torch.no_grad():
        normal = up(feats, image, output_size=(16, 24))
        up.fast = True
        calls, formats = [], []
        for module in up.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.register_forward_hook(lambda *_: calls.append(1))
        up.encoder[1].register_forward_hook(
            lambda _m, args, _o: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        fast = up(feats, image, output_size=(16, 24))
    assert not calls and formats == [True]
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, normal, rtol=1e-5, atol=1e-5)


def test_fast_mode_leaves_training_alone():
    """Training needs the batch statistics: in train mode fast changes nothing (and BatchNorm still runs)."""
    up = create_upsampler("uplift", 6, 16, **TINY).train()
    feats, image = make_inputs(6, (2, 3))
    reference = up(feats, image, output_size=(4, 6))
    up.fast = True
    assert all(m.fold for m in up.modules() if isinstance(m, ConvBNReLU))
    torch.testing.assert_close(up(feats, image, output_size=(4, 6)), reference)


def test_built_for_one_channel_count():
    up = create_upsampler("uplift", 384, 14, **TINY)
    with pytest.raises(ValueError, match=r"features must be \(B, 384, h, w\).*in_channels=384"):
        up(*make_inputs(24, (2, 3), patch=14))


def test_bad_widths_are_refused():
    with pytest.raises(ValueError, match="decoder_channels must be >= 17"):
        create_upsampler("uplift", 8, 14, decoder_channels=16)
    with pytest.raises(ValueError, match="encoder_channels must be at least two"):
        create_upsampler("uplift", 8, 14, encoder_channels=(16,))
    with pytest.raises(ValueError, match="steps must be >= 0"):
        create_upsampler("uplift", 8, 14, **TINY).iterate(*make_inputs(8, (2, 2)), -1)
