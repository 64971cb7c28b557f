"""FeatUp-Implicit: fitting reduces its loss, fits are cached, band-limited frequencies, bad requests."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.toy_backbone import ToyBackbone
from wrc import create_upsampler
from wrc.upsamplers.featup_implicit import nyquist

FAST = {"steps": 60, "num_jitters": 32, "views_per_step": 4, "pca_dim": 8, "width": 32, "progress": False}


@pytest.fixture
def problem():
    backbone = ToyBackbone(12, 8, seed=1)
    image = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    return backbone, backbone(image), image


def test_fitting_reduces_the_loss_on_a_fixed_image(problem):
    backbone, feats, image = problem
    up = create_upsampler("featup_implicit", 12, 8, **FAST)
    field = up.fitted(feats, image, backbone)
    losses = torch.tensor(field.losses)
    assert len(losses) == 60
    assert losses[-10:].mean() < losses[:10].mean() - 0.05


def test_fitted_features_reproduce_the_tokens_when_pooled(problem):
    backbone, feats, image = problem
    out = create_upsampler("featup_implicit", 12, 8, **{**FAST, "steps": 150})(feats, image, backbone=backbone)
    pooled = torch.nn.functional.avg_pool2d(out, 8)
    assert torch.nn.functional.cosine_similarity(pooled, feats).mean() > 0.7


def test_repeated_queries_hit_the_cache(problem, tmp_path):
    backbone, feats, image = problem
    up = create_upsampler("featup_implicit", 12, 8, cache_dir=str(tmp_path), **FAST)
    first = up(feats, image, backbone=backbone)
    second = up(feats, image, output_size=(16, 20), backbone=backbone)
    assert up.fits == 1
    torch.testing.assert_close(second, torch.nn.functional.interpolate(first, size=(16, 20), mode="bilinear",
                                                                       antialias=True, align_corners=False))
    other = torch.rand(1, 3, 32, 40)
    up(backbone(other), other, backbone=backbone)
    assert up.fits == 2
    fresh = create_upsampler("featup_implicit", 12, 8, cache_dir=str(tmp_path), **FAST)  # a new process, same disk
    torch.testing.assert_close(fresh(feats, image, backbone=backbone), first)
    assert fresh.fits == 0


def test_a_fit_is_a_deterministic_function_of_the_image(problem):
    backbone, feats, image = problem
    a = create_upsampler("featup_implicit", 12, 8, **FAST)(feats, image, backbone=backbone)
    b = create_upsampler("featup_implicit", 12, 8, **FAST)(feats, image, backbone=backbone)
    torch.testing.assert_close(a, b)


def test_frequencies_stop_at_the_nyquist_frequency_of_the_fitted_grid():
    up = create_upsampler("featup_implicit", 12, 8, **FAST)
    field = up.make_field(8, 224)
    assert field.freqs.max().item() == pytest.approx(nyquist(224)) and field.freqs.min().item() == pytest.approx(
        torch.exp(torch.tensor(-2.0)).item())
    assert nyquist(224) == pytest.approx(torch.pi * 111.5)


def test_resolution_above_the_image_is_refused(problem):
    backbone, feats, image = problem
    up = create_upsampler("featup_implicit", 12, 8, **FAST)
    with pytest.raises(ValueError, match="cannot answer 64x80"):
        up(feats, image, output_size=(64, 80), backbone=backbone)
