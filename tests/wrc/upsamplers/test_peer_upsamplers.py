"""Method-specific checks of the peers: FeatUp-JBU, resize-conv, transposed conv, large image, strided, SRT."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.toy_backbone import ToyBackbone
from wrc import create_upsampler
from wrc.ops.extension import reference_only
from wrc.upsamplers.featup_jbu import JointBilateralLayer


def inputs(channels=8, patch=16, grid=(3, 5), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *grid, generator=g),
            torch.rand(batch, 3, grid[0] * patch, grid[1] * patch, generator=g))


# ----------------------------------------------------------------------------------------------------------------
# FeatUp-JBU
# ----------------------------------------------------------------------------------------------------------------


def test_jbu_parameter_count_matches_featup():
    up = create_upsampler("featup_jbu", 384, 16)
    assert sum(p.numel() for p in up.layers.parameters()) == 4 * 6233
    assert sum(p.numel() for p in up.parameters()) == 172_772


def test_jbu_bilateral_kernel_is_positive_and_normalised():
    layer = JointBilateralLayer(radius=3).eval()
    with torch.no_grad():
        layer.range_temperature.fill_(1.5)
        kernel = layer.bilateral_kernel(torch.randn(2, 3, 10, 12))
    assert kernel.shape == (2, 49, 10, 12)
    assert (kernel > 0).all()
    torch.testing.assert_close(kernel.sum(dim=1), torch.ones(2, 10, 12))


def test_jbu_spatial_kernel_favours_the_centre_for_a_flat_guidance():
    """Flat guidance: the range term is uniform, so the kernel is the normalised Gaussian on the [-1, 1] grid."""
    layer = JointBilateralLayer(radius=2).eval()
    kernel = layer.bilateral_kernel(torch.zeros(1, 3, 6, 6))[0, :, 3, 3]
    grid = torch.linspace(-1, 1, 5)
    gauss = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / 2).flatten()
    torch.testing.assert_close(kernel, gauss / gauss.sum())


def test_jbu_without_fixup_keeps_constant_features_constant():
    up = create_upsampler("featup_jbu", 8, 14, kernel_fixup=False, refine=False).eval()
    feats, image = torch.full((1, 8, 4, 3), 2.5), torch.rand(1, 3, 56, 42)
    torch.testing.assert_close(up(feats, image), torch.full((1, 8, 56, 42), 2.5))


@pytest.mark.parametrize("patch, size", [(14, 224), (16, 224), (8, 224)])
def test_jbu_any_patch_size_reaches_the_image_grid(patch, size):
    """Patch 14 at 224: four layers give 256, resized to 224 (the original returns 256)."""
    up = create_upsampler("featup_jbu", 8, patch).eval()
    grid = size // patch
    out = up(torch.randn(1, 8, grid, grid), torch.rand(1, 3, size, size))
    assert out.shape == (1, 8, size, size)


def test_jbu_fused_kernel_equals_the_unfold_reference():
    up = create_upsampler("featup_jbu", 8, 16).eval()
    feats, image = inputs()
    fused = up(feats, image)
    with reference_only():
        reference = up(feats, image)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_jbu_runs_under_bf16_autocast():
    up = create_upsampler("featup_jbu", 8, 16).eval()
    feats, image = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = up(feats, image, output_size=(12, 20))
    assert out.shape == (2, 8, 12, 20) and torch.isfinite(out).all()


def test_jbu_guidance_of_another_size_is_resized_and_a_wrong_batch_is_an_error():
    """Documented: the image is resized to every layer's grid, so its size need not be P times the grid."""
    up = create_upsampler("featup_jbu", 8, 16).eval()
    feats, _ = inputs()
    assert up(feats, torch.rand(2, 3, 40, 50), output_size=(12, 20)).shape == (2, 8, 12, 20)
    with pytest.raises(ValueError, match=r"image must be \(B=2, 3, H, W\)"):
        up(feats, torch.rand(1, 3, 48, 80))


def test_jbu_radius_below_one_is_an_error():
    with pytest.raises(ValueError, match="radius must be >= 1"):
        create_upsampler("featup_jbu", 8, 16, radius=0)


# ----------------------------------------------------------------------------------------------------------------
# resize-conv and transposed conv
# ----------------------------------------------------------------------------------------------------------------


def test_resize_conv_starts_as_repeated_bilinear():
    up = create_upsampler("resize_conv", 8, 16).eval()
    feats, image = inputs()
    expected = feats
    for _ in range(2):
        expected = F.interpolate(expected, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(feats, image, output_size=(12, 20)), expected)


def test_resize_conv_parameter_count():
    assert sum(p.numel() for p in create_upsampler("resize_conv", 384, 16).parameters()) == 4 * (387 * 9 * 384 + 384)


def test_transposed_conv_starts_as_bilinear_away_from_the_border():
    up = create_upsampler("transposed_conv", 8, 16, num_layers=1).eval()
    feats, image = inputs(grid=(6, 7))
    out = up(feats, image, output_size=(12, 14))
    bilinear = F.interpolate(feats, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], bilinear[..., 1:-1, 1:-1])


def test_transposed_conv_groups_must_divide_channels():
    with pytest.raises(ValueError, match="groups dividing in_channels=8"):
        create_upsampler("transposed_conv", 8, 16, groups=3)


# ----------------------------------------------------------------------------------------------------------------
# Backbone-side baselines
# ----------------------------------------------------------------------------------------------------------------


def ramp(batch: int, height: int, width: int) -> torch.Tensor:
    """Channel 0 = row coordinate, 1 = column coordinate of each pixel centre, 2 = zero."""
    ys = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width) + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width) + 0.5
    return torch.stack([ys, xs, torch.zeros_like(ys)]).expand(batch, 3, height, width).clone()


def test_large_image_runs_the_backbone_on_the_enlarged_image():
    backbone = ToyBackbone(6, 8)
    feats, image = inputs(6, 8)
    up = create_upsampler("large_image", 6, 8)
    out = up(feats, image, output_size=(6, 10), backbone=backbone)
    large = F.interpolate(image, size=(48, 80), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(out, backbone(large))


def test_large_image_refuses_huge_images():
    feats, image = inputs(6, 8)
    with pytest.raises(ValueError, match="above model.max_side=64"):
        create_upsampler("large_image", 6, 8, max_side=64)(feats, image, output_size=(12, 20),
                                                            backbone=ToyBackbone(6, 8))


@pytest.mark.parametrize("patch, factor", [(16, 2), (16, 4), (8, 2)])
def test_strided_tokens_are_centred_on_the_finer_cells(patch, factor):
    """A patch-mean backbone on a coordinate ramp returns each token's centre: it must be the centre of
    the corresponding cell of the s-times finer grid (interior cells; the border sees replicate padding).
    The ramp is divided by a power of two above its largest coordinate (a valid [0, 1] image) and the output
    multiplied back: both exact, so the tolerance is the same as in pixels."""
    backbone = ToyBackbone(3, patch, mean=True)
    unit = 128.0
    image = ramp(1, 4 * patch, 5 * patch) / unit
    feats = backbone(image)
    out = create_upsampler("strided", 3, patch)(feats, image, output_size=(4 * factor, 5 * factor), backbone=backbone)
    out = out * unit  # back in pixels, exactly
    cell = patch / factor
    rows = (torch.arange(4 * factor) + 0.5) * cell
    cols = (torch.arange(5 * factor) + 0.5) * cell
    inner = slice(factor, -factor)
    torch.testing.assert_close(out[0, 0, inner, inner], rows[inner, None].expand(-1, 5 * factor)[:, inner])
    torch.testing.assert_close(out[0, 1, inner, inner], cols[None, inner].expand(4 * factor, -1)[inner, :])


def test_strided_with_the_real_backbone(test_vit):
    image = torch.rand(1, 3, 64, 96)
    feats = test_vit(image)
    out = create_upsampler("strided", test_vit.embed_dim, 16)(feats, image, output_size=(8, 12), backbone=test_vit)
    assert out.shape == (1, test_vit.embed_dim, 8, 12) and torch.isfinite(out).all()


def test_backbone_side_methods_need_the_backbone():
    feats, image = inputs(6, 8)
    for name in ("large_image", "strided", "srt"):
        with pytest.raises(ValueError, match="pass backbone="):
            create_upsampler(name, 6, 8)(feats, image)


# ----------------------------------------------------------------------------------------------------------------
# SRT
# ----------------------------------------------------------------------------------------------------------------


def test_srt_without_shifts_is_nearest_upsampling():
    feats, image = inputs(6, 8)
    backbone = ToyBackbone(6, 8)
    for aggregate in ("mean", "median"):
        up = create_upsampler("srt", 6, 8, max_shift=0, aggregate=aggregate)
        torch.testing.assert_close(up(feats, image, backbone=backbone), F.interpolate(feats, scale_factor=8))
        torch.testing.assert_close(up(feats, image, output_size=(3, 5), backbone=backbone), feats)
    assert backbone.calls == 0, "the unshifted view reuses the features passed in"


def srt_oracle(image: torch.Tensor, patch: int, d: int, padding_mode: str, aggregate: str = "mean") -> torch.Tensor:
    """SRT of a patch-mean backbone, pixel by pixel: the mean (median) over the shifts whose back-shifted
    position stays in the image of the mean of the shifted image over the patch containing it."""
    _, height, width = image.shape
    out = torch.zeros_like(image)

    def shifted_pixel(u: int, v: int, dy: int, dx: int) -> torch.Tensor:
        y, x = u - dy, v - dx
        if padding_mode == "circular":
            y, x = y % height, x % width
        else:  # replicate
            y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
        return image[:, y, x]

    for y, x in itertools.product(range(height), range(width)):
        values = []
        for dy, dx in itertools.product(range(-d, d + 1), repeat=2):
            qy, qx = y + dy, x + dx
            if padding_mode == "circular":
                qy, qx = qy % height, qx % width
            elif not (0 <= qy < height and 0 <= qx < width):
                continue
            py, px = qy // patch * patch, qx // patch * patch
            values.append(torch.stack([shifted_pixel(u, v, dy, dx)
                                       for u in range(py, py + patch) for v in range(px, px + patch)]).mean(0))
        stacked = torch.stack(values)
        out[:, y, x] = stacked.mean(0) if aggregate == "mean" else stacked.median(0).values
    return out


@pytest.mark.parametrize("aggregate", ["mean", "median"])
@pytest.mark.parametrize("padding_mode", ["circular", "replicate"])
def test_srt_matches_the_analytic_aggregate_of_a_patch_mean_backbone(padding_mode, aggregate):
    patch, d = 4, 1
    image = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(3))
    backbone = ToyBackbone(3, patch, mean=True)
    up = create_upsampler("srt", 3, patch, max_shift=d, padding_mode=padding_mode, batch_size=4, aggregate=aggregate)
    out = up(backbone(image), image, backbone=backbone)
    torch.testing.assert_close(out[0], srt_oracle(image[0], patch, d, padding_mode, aggregate))


def test_srt_batches_views_and_counts_backbone_passes():
    feats, image = inputs(6, 8)
    backbone = ToyBackbone(6, 8)
    up = create_upsampler("srt", 6, 8, max_shift=2, batch_size=6)
    reference = create_upsampler("srt", 6, 8, max_shift=2, batch_size=100)(feats, image, backbone=ToyBackbone(6, 8))
    torch.testing.assert_close(up(feats, image, backbone=backbone), reference)
    assert backbone.calls == 2 * (25 - 1)


def test_srt_random_subset_of_views():
    up = create_upsampler("srt", 6, 8, max_shift=3, num_views=10, seed=1)
    shifts = up.shifts()
    assert len(shifts) == 10 and shifts[0] == (0, 0) and len(set(shifts)) == 10
    assert shifts == create_upsampler("srt", 6, 8, max_shift=3, num_views=10, seed=1).shifts()
    assert len(create_upsampler("srt", 6, 8, max_shift=1).shifts()) == 9


def test_srt_shift_of_a_patch_or_more_is_an_error():
    with pytest.raises(ValueError, match=r"max_shift must be in \[0, patch_size=8\)"):
        create_upsampler("srt", 6, 8, max_shift=8)
