"""The paper presets of FeatUp-JBU and SRT (and LiFT's guidance normalisation), each difference from the default
checked on a case computed by hand."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.toy_backbone import ToyBackbone
from wrc import create_upsampler
from wrc.layers.guidance import IMAGENET_MEAN, IMAGENET_STD
from wrc.upsamplers.srt import shift_image

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def columns(values: list[float], rows: int) -> torch.Tensor:
    """(1, 3, rows, len(values)): every row and channel holds ``values``."""
    return torch.tensor(values).view(1, 1, 1, -1).expand(1, 3, rows, len(values)).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# FeatUp-JBU: guidance resizing and the final resize
# ----------------------------------------------------------------------------------------------------------------


def test_jbu_guidance_shrink_average_pool_versus_antialiased_bilinear():
    """4 -> 2 pixels of the row (0, 1/3, 2/3, 1): pooling averages pairs, (1/6, 5/6); the antialiased triangle
    (half-width 2 input pixels) weighs the pixels at distances 0.5, 0.5, 1.5 by 0.75, 0.75, 0.25 (normalised by
    their sum 1.75; the fourth lies outside the image): 0.25 / 1.75 + 0.25 * 2/3 / 1.75 = 5/21."""
    image = columns([0, 1 / 3, 2 / 3, 1], rows=4)
    paper = create_upsampler("featup_jbu", 8, 2, preset="paper").guidance(image, (2, 2)) * STD + MEAN
    antialiased = create_upsampler("featup_jbu", 8, 2, preset="antialiased").guidance(image, (2, 2)) * STD + MEAN
    torch.testing.assert_close(paper, columns([1 / 6, 5 / 6], rows=2))
    torch.testing.assert_close(antialiased, columns([5 / 21, 16 / 21], rows=2))


def test_jbu_guidance_enlarged_by_average_pooling_copies_and_averages_pixels():
    """3 -> 4 (patch 14's 224 -> 256 in small): adaptive pooling's windows are [0,1), [0,2), [1,3), [2,3), so the
    row (0, 1/4, 1) becomes (0, 1/8, 5/8, 1); bilinear samples at -0.125, 0.625, 1.375, 2.125: (0, 5/32, 17/32, 1)."""
    image = columns([0, 0.25, 1], rows=3)
    paper = create_upsampler("featup_jbu", 8, 2, preset="paper").guidance(image, (4, 4)) * STD + MEAN
    antialiased = create_upsampler("featup_jbu", 8, 2, preset="antialiased").guidance(image, (4, 4)) * STD + MEAN
    torch.testing.assert_close(paper[..., 0, :], columns([0, 0.125, 0.625, 1], rows=1)[..., 0, :])
    torch.testing.assert_close(antialiased[..., 0, :], columns([0, 0.15625, 0.53125, 1], rows=1)[..., 0, :])


def test_jbu_final_resize_is_antialiased_only_in_the_antialiased_preset():
    """A 4 x 4 grid asked for 3 x 3 (no layer runs, refine off), f = x + 10 y with x, y = 0..3. Plain bilinear
    samples at 1/6, 1.5, 17/6; the antialiased triangle (half-width 4/3) gives 0.7 a + 0.3 b at the first
    output, (b + c) / 2 in the middle. Per axis: paper (1/6, 1.5, 17/6), antialiased (0.3, 1.5, 2.7)."""
    ramp = torch.arange(4.0)
    features = (ramp.view(1, 4) + 10 * ramp.view(4, 1)).expand(1, 2, 4, 4).contiguous()
    image = torch.rand(1, 3, 8, 8)
    kwargs = {"num_layers": 1, "refine": False}
    paper = create_upsampler("featup_jbu", 2, 2, preset="paper", **kwargs).eval()(features, image, (3, 3))
    antialiased = create_upsampler("featup_jbu", 2, 2, preset="antialiased", **kwargs).eval()(features, image, (3, 3))

    def expected(axis: list[float]) -> torch.Tensor:
        a = torch.tensor(axis)
        return (a.view(1, 3) + 10 * a.view(3, 1)).expand(1, 2, 3, 3)

    torch.testing.assert_close(paper, expected([1 / 6, 1.5, 17 / 6]))
    torch.testing.assert_close(antialiased, expected([0.3, 1.5, 2.7]))


def test_jbu_paper_stack_for_patch_14_runs_four_layers_then_a_plain_resize():
    """2 x 2 tokens of patch 14 (a 28-pixel image): the layers reach 32 and the last step is plain bilinear."""
    torch.manual_seed(0)
    features, image = torch.randn(1, 4, 2, 2), torch.rand(1, 3, 28, 28)
    up = create_upsampler("featup_jbu", 4, 14, preset="paper").eval()
    assert up.stack_size((2, 2), (28, 28)) == (32, 32)
    full = up(features, image, (32, 32))
    torch.testing.assert_close(up(features, image), F.interpolate(full, size=(28, 28), mode="bilinear"))


def test_jbu_default_is_the_paper_preset():
    """The default is the original's behaviour (the synthetic benchmark's seeds back it: featup_jbu.py)."""
    default, paper = create_upsampler("featup_jbu", 8, 14), create_upsampler("featup_jbu", 8, 14, preset="paper")
    assert (default.preset, default.guidance_resize, default.final_antialias) == ("paper", "adaptive_avg", False)
    assert (paper.guidance_resize, paper.final_antialias) == (default.guidance_resize, default.final_antialias)


def test_jbu_former_default_preset_name_loads_as_antialiased(caplog):
    """Checkpoints saved before the default changed say preset="default": they mean the antialiased flags."""
    with caplog.at_level("WARNING", logger="wrc"):
        old = create_upsampler("featup_jbu", 8, 14, preset="default")
    assert (old.preset, old.guidance_resize, old.final_antialias) == ("antialiased", "bilinear", True)
    assert "preset='default' is now called 'antialiased'" in caplog.text


def test_jbu_flags_override_their_preset_and_bad_values_are_named():
    up = create_upsampler("featup_jbu", 8, 14, preset="paper", final_antialias=True)
    assert (up.guidance_resize, up.final_antialias) == ("adaptive_avg", True)
    with pytest.raises(ValueError, match=r"preset='original'; expected one of \('paper', 'antialiased'\)"):
        create_upsampler("featup_jbu", 8, 14, preset="original")
    with pytest.raises(ValueError, match=r"guidance_resize='nearest'; expected one of"):
        create_upsampler("featup_jbu", 8, 14, guidance_resize="nearest")


# ----------------------------------------------------------------------------------------------------------------
# SRT: views, division, border fill
# ----------------------------------------------------------------------------------------------------------------


class ConstantBackbone(nn.Module):
    """Tokens of ones, whatever the image (and a ``mean`` buffer, as FrozenBackbone has)."""

    def __init__(self, channels: int, patch: int, mean: tuple[float, float, float] = (0.1, 0.2, 0.3)) -> None:
        super().__init__()
        self.channels, self.patch, self.seen = channels, patch, []
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append(image)
        h, w = image.shape[-2] // self.patch, image.shape[-1] // self.patch
        return image.new_ones(image.shape[0], self.channels, h, w)


def covering_views(side: int, position: int, d: int) -> int:
    """How many shifts s in [-d, d] keep position + s inside [0, side)."""
    return sum(0 <= position + s < side for s in range(-d, d + 1))


def test_srt_paper_counts_50_views_and_divides_by_them():
    """Constant tokens: the default gives 1 everywhere; the paper preset gives (covering shifts + 1) / 50 at every
    pixel (the unshifted view covers all of them twice): 17/50 = 0.34 at a corner, 29/50 at an edge, 1 inside."""
    patch, d, size = 8, 3, (16, 24)
    features, image = torch.ones(1, 2, 2, 3), torch.rand(1, 3, *size)
    backbone = ConstantBackbone(2, patch)
    paper = create_upsampler("srt", 2, patch, max_shift=d, preset="paper")
    assert len(paper.shifts()) == 50
    out = paper(features, image, backbone=backbone)[0, 0]
    assert sum(view.shape[0] for view in backbone.seen) == 48  # both unshifted views reuse the features
    expected = torch.tensor([[(covering_views(size[0], y, d) * covering_views(size[1], x, d) + 1) / 50
                              for x in range(size[1])] for y in range(size[0])])
    torch.testing.assert_close(out, expected)
    assert out[0, 0] == pytest.approx(0.34) and out[0, 10] == pytest.approx(0.58) and out[8, 12] == 1
    default = create_upsampler("srt", 2, patch, max_shift=d)(features, image, backbone=ConstantBackbone(2, patch))
    torch.testing.assert_close(default, torch.ones_like(default))


def test_srt_duplicated_unshifted_view_weighs_two_of_fifty():
    """Unshifted tokens 3, shifted ones 1, circular shifts (every view covers every pixel): the default averages
    (3 + 48) / 49; counting the unshifted view twice gives (2 * 3 + 48) / 50 = 1.08."""
    features, image = torch.full((1, 2, 2, 2), 3.0), torch.rand(1, 3, 16, 16)
    kwargs = {"max_shift": 3, "padding_mode": "circular"}
    default = create_upsampler("srt", 2, 8, **kwargs)(features, image, backbone=ConstantBackbone(2, 8))
    doubled = create_upsampler("srt", 2, 8, duplicate_unshifted=True, **kwargs)(features, image,
                                                                                backbone=ConstantBackbone(2, 8))
    torch.testing.assert_close(default, torch.full_like(default, 51 / 49))
    torch.testing.assert_close(doubled, torch.full_like(doubled, 54 / 50))


def test_srt_mean_fill_is_the_backbones_mean_colour():
    """Shift (1, -2) of a zero image: the first row and the last two columns are the fill colour, the rest 0;
    in the SRT views the shifted-in band is the backbone's mean, i.e. zero after its normalisation."""
    fill = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    shifted = shift_image(torch.zeros(1, 3, 4, 5), 1, -2, "mean", fill)
    outside = torch.zeros(4, 5)
    outside[0, :] = outside[:, 3:] = 1
    torch.testing.assert_close(shifted, fill * outside)

    backbone = ConstantBackbone(2, 8)
    image = torch.rand(1, 3, 16, 16)
    create_upsampler("srt", 2, 8, max_shift=1, preset="paper", batch_size=1)(torch.ones(1, 2, 2, 2), image,
                                                                            backbone=backbone)
    view = backbone.seen[-1]  # the last shift, (1, 1)
    torch.testing.assert_close(view[..., 0, :] - backbone.mean[..., 0], torch.zeros(1, 3, 16))
    torch.testing.assert_close(view[..., :, 0] - backbone.mean[..., 0], torch.zeros(1, 3, 16))
    torch.testing.assert_close(view[..., 1:, 1:], image[..., :-1, :-1])


def test_srt_mean_fill_falls_back_to_imagenet_without_a_backbone_mean():
    backbone = ToyBackbone(3, 4, mean=True)
    seen = []
    backbone.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    image = torch.rand(1, 3, 8, 8)
    create_upsampler("srt", 3, 4, max_shift=1, padding_mode="mean", batch_size=1)(backbone(image), image,
                                                                                 backbone=backbone)
    torch.testing.assert_close(seen[-1][..., 0, :], MEAN[..., 0].expand(1, 3, 8))


def original_srt(image: torch.Tensor, patch: int, d: int) -> torch.Tensor:
    """The original's aggregate of a patch-mean backbone, pixel by pixel: 1 + (2d + 1)^2 views (the unshifted one
    twice), shifted with the mean colour (ImageNet's: zero after normalisation), tokens nearest-upsampled,
    shifted back with zeros, summed, divided by the number of views."""
    _, height, width = image.shape
    shifts = [(0, 0), *itertools.product(range(-d, d + 1), repeat=2)]
    fill = torch.tensor(IMAGENET_MEAN)
    total = torch.zeros_like(image)
    for dy, dx in shifts:
        view = torch.empty_like(image)
        for y, x in itertools.product(range(height), range(width)):
            inside = 0 <= y - dy < height and 0 <= x - dx < width
            view[:, y, x] = image[:, y - dy, x - dx] if inside else fill
        tokens = view.view(3, height // patch, patch, width // patch, patch).mean(dim=(2, 4))
        for y, x in itertools.product(range(height), range(width)):
            if 0 <= y + dy < height and 0 <= x + dx < width:
                total[:, y, x] += tokens[:, (y + dy) // patch, (x + dx) // patch]
    return total / len(shifts)


def test_srt_paper_preset_equals_the_original_aggregate():
    patch, d = 4, 1
    image = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(3))
    backbone = ToyBackbone(3, patch, mean=True)
    up = create_upsampler("srt", 3, patch, max_shift=d, preset="paper", batch_size=4)
    torch.testing.assert_close(up(backbone(image), image, backbone=backbone)[0], original_srt(image[0], patch, d))


def test_srt_flags_override_their_preset_and_bad_values_are_named():
    up = create_upsampler("srt", 2, 8, preset="paper", padding_mode="reflect")
    assert (up.padding_mode, up.divide_by, up.duplicate_unshifted) == ("reflect", "views", True)
    with pytest.raises(ValueError, match=r"divide_by='pixels'; expected one of \('coverage', 'views'\)"):
        create_upsampler("srt", 2, 8, divide_by="pixels")
    with pytest.raises(ValueError, match=r"preset='fast'"):
        create_upsampler("srt", 2, 8, preset="fast")
    with pytest.raises(ValueError, match=r"fill must be a \(1, C, 1, 1\) colour"):
        shift_image(torch.zeros(1, 3, 4, 4), 1, 0, "mean")


# ----------------------------------------------------------------------------------------------------------------
# LiFT: guidance normalisation
# ----------------------------------------------------------------------------------------------------------------


def test_lift_half_guidance_norm_maps_zero_one_to_minus_one_one():
    image = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    half = create_upsampler("lift", 8, 16, guidance_norm="half").normalize(image)
    torch.testing.assert_close(half, torch.tensor([-1.0, -0.5, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3))
    torch.testing.assert_close(create_upsampler("lift", 8, 16).normalize(image), (image - MEAN) / STD)
    with pytest.raises(ValueError, match=r"guidance_norm='clip'; expected one of \('imagenet', 'half'\)"):
        create_upsampler("lift", 8, 16, guidance_norm="clip")
