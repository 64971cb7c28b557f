"""The guidance encoder's full-resolution stage in row bands (wrc.layers.full_resolution) against the same layers
applied one after the other (the oracle: GuidanceEncoder's own modules), on shapes that exercise every band edge."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers.group_norm import randomise_group_norms
from wrc.layers.blocks import GuidanceEncoder
from wrc.layers.full_resolution import band_rows, full_resolution_stage, image_moments
from wrc.layers.norm import group_norm_affine

CL = torch.channels_last


def randomised_encoder(dtype: torch.dtype, channels: int = 8) -> GuidanceEncoder:
    torch.manual_seed(0)
    return randomise_group_norms(GuidanceEncoder(channels), dtype)


def layer_by_layer(encoder: GuidanceEncoder, image: torch.Tensor) -> torch.Tensor:
    return encoder.to_quarter[0](encoder.stem(image.contiguous()))  # NCHW: PyTorch's kernels, nothing of the stage


@pytest.mark.parametrize("size", [(20, 18), (21, 17), (9, 30)])  # even, odd (last band padded), fewer rows than a band
@pytest.mark.parametrize("band_pixels", [1, 60, 10_000])  # 2 rows per band (the minimum), several, one band
def test_banded_stage_equals_the_layers_float64(size, band_pixels):
    encoder = randomised_encoder(torch.float64)
    torch.manual_seed(1)
    image = torch.randn(2, 3, *size, dtype=torch.float64).contiguous(memory_format=CL) * 1.5 + 0.3
    with torch.no_grad():
        out = full_resolution_stage(encoder.stem, encoder.to_quarter[0], image, band_pixels)
        expected = layer_by_layer(encoder, image)
    assert out.shape == expected.shape == (2, 8, (size[0] + 1) // 2, (size[1] + 1) // 2)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_banded_stage_float32_at_rounding():
    encoder = randomised_encoder(torch.float32)
    torch.manual_seed(2)
    image = torch.rand(1, 3, 64, 48).contiguous(memory_format=CL)
    with torch.no_grad():
        out = full_resolution_stage(encoder.stem, encoder.to_quarter[0], image, band_pixels=8 * 48)
        expected = layer_by_layer(encoder.double(), image.double())
    assert out.is_contiguous(memory_format=CL)
    assert (out.double() - expected).abs().max() < 1e-5 * expected.abs().max()


def test_banded_stage_folds_the_normalisation_at_rounding():
    """A raw image with its normalisation's mean and std: the same as the normalised image through the layers."""
    from wrc.layers.guidance import IMAGENET_MEAN, IMAGENET_STD

    encoder = randomised_encoder(torch.float32)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.manual_seed(3)
    image = torch.rand(2, 3, 64, 48).contiguous(memory_format=CL)
    with torch.no_grad():
        out = full_resolution_stage(encoder.stem, encoder.to_quarter[0], image, band_pixels=8 * 48, mean=mean,
                                    std=std)
        expected = layer_by_layer(encoder.double(), ((image.double() - mean.double()) / std.double()))
    assert (out.double() - expected).abs().max() < 1e-5 * expected.abs().max()


def test_fused_band_convolutions_equal_convolution_and_add(monkeypatch):
    """float32: oneDNN's in-place add of the strided conv into the output (conv_add_) against F.conv2d and add_
    into zeros: the same sums, to float32 rounding (the same bits on a 2-core Intel Xeon with AVX-512; on a 2-core
    AMD EPYC with AVX2 oneDNN takes another kernel with the post-op: 5e-7 of the scale apart)."""
    import wrc.layers.conv as fused_convolutions

    if not fused_convolutions.oneDNN_pointwise():
        pytest.skip("this PyTorch has no oneDNN pointwise convolutions: the stage uses F.conv2d only")
    encoder = randomised_encoder(torch.float32)
    image = torch.rand(2, 3, 50, 36).contiguous(memory_format=CL)  # batch 2: each sample's bands in place
    in_place, op = [], torch.ops.mkldnn._convolution_pointwise_.binary

    def counted(*args):
        in_place.append(1)
        return op(*args)

    with torch.no_grad():
        monkeypatch.setattr(torch.ops.mkldnn._convolution_pointwise_, "binary", counted)
        fused = full_resolution_stage(encoder.stem, encoder.to_quarter[0], image, band_pixels=12 * 36)
        assert len(in_place) == 2 * 5  # per sample: 5 bands of 6 output rows (the shortcut is pixel_mlp's)
        monkeypatch.setattr(fused_convolutions, "FUSED_CONVOLUTIONS", False)
        plain = full_resolution_stage(encoder.stem, encoder.to_quarter[0], image, band_pixels=12 * 36)
    assert len(in_place) == 10
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6 * plain.abs().max().item())


def test_encoder_uses_bands_for_cpu_inference_only():
    encoder = randomised_encoder(torch.float32)
    image = torch.rand(1, 3, 192, 192).contiguous(memory_format=CL)  # 36,864 pixels: more than one band
    with torch.no_grad():
        assert GuidanceEncoder.runs_in_bands(image)
        banded = encoder(image, (12, 12))
    assert not GuidanceEncoder.runs_in_bands(image)  # autograd: the layers one by one
    grads = encoder(image, (12, 12))
    with torch.no_grad():
        exact = copy.deepcopy(encoder).double()(image.double().contiguous(), (12, 12))
    for b, g, e in zip(banded, grads, exact, strict=True):
        # float32 rounding amplified through six randomised bottlenecks: ~3e-6 of the scale, on either path
        tol = 1e-5 * e.abs().max()
        assert (b.double() - e).abs().max() < tol and (g.detach().double() - e).abs().max() < tol
    with torch.no_grad():
        assert not GuidanceEncoder.runs_in_bands(image[..., :64, :64])  # one band: nothing to gain
        assert not GuidanceEncoder.runs_in_bands(image.half())


@pytest.mark.parametrize("folded", [False, True])  # the image normalised, or raw with mean and std to fold
def test_encoder_calls_norms_it_cannot_fold(folded):
    """With every GroupNorm replaced by the identity, the banded stage and the folded stem step aside: the encoder
    equals its modules applied one by one (float64, an image of several bands)."""
    encoder = randomised_encoder(torch.float64)
    for module in list(encoder.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.GroupNorm):
                setattr(module, name, torch.nn.Identity())
    torch.manual_seed(3)
    image = torch.rand(1, 3, 192, 192, dtype=torch.float64).contiguous(memory_format=CL)
    mean, std = torch.full((1, 3, 1, 1), 0.4, dtype=torch.float64), torch.full((1, 3, 1, 1), 0.2, dtype=torch.float64)
    normalised = (image - mean) / std
    with torch.no_grad():
        out = encoder(image, (12, 12), mean, std) if folded else encoder(normalised, (12, 12))
        quarter = encoder.to_quarter(encoder.stem(normalised.contiguous()))
        guide_2x = torch.nn.functional.adaptive_max_pool2d(quarter, (24, 24))
        expected = guide_2x, encoder.to_grid(guide_2x)
    for o, e in zip(out, expected, strict=True):
        torch.testing.assert_close(o, e, rtol=1e-10, atol=1e-10)


def test_band_rows_are_even_and_at_least_two():
    assert band_rows(448) == 72
    assert band_rows(10_000) == 2
    assert all(band_rows(w, p) % 2 == 0 for w in (1, 7, 448) for p in (1, 100, 1 << 15))


def test_moments_and_groupnorm_affine_match_the_definitions():
    torch.manual_seed(3)
    image = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    mean, cov = image_moments(image)
    pixels = image.flatten(2)
    torch.testing.assert_close(mean, pixels.mean(-1))
    for i in range(2):
        torch.testing.assert_close(cov[i], torch.cov(pixels[i], correction=0))
    norm = torch.nn.GroupNorm(2, 4).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(2, 4, 6, 3, dtype=torch.float64) * 2 + 1
    scale, shift = group_norm_affine(norm, x.mean((2, 3)), x.var((2, 3), unbiased=False), torch.float64)
    torch.testing.assert_close(x * scale.view(2, 4, 1, 1) + shift.view(2, 4, 1, 1), norm(x))
