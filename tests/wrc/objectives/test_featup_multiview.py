"""FeatUp's multi-view objective: jitter correspondence, downsamplers, likelihood, projection, and an exact
zero loss for a perfect upsampler of a backbone whose tokens are patch means."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.toy_backbone import ToyBackbone
from wrc.data.jitter import Jitter, apply_jitter, sample_jitter
from wrc.layers.downsamplers import AttentionDownsampler, SimpleDownsampler
from wrc.objectives import create_objective
from wrc.objectives.featup_multiview import gaussian_nll, random_projection, total_variation
from wrc.upsamplers import Upsampler


def test_identity_jitter_and_flip():
    x = torch.randn(2, 3, 8, 10)
    assert torch.equal(apply_jitter(x, Jitter(0, 1.0, 0, 0, False)), x)
    assert torch.equal(apply_jitter(x, Jitter(0, 1.0, 0, 0, True)), x.flip(-1))


def test_pad_and_crop_shift_the_map():
    """Pad 2 then crop at (1, 3): out[y, x] = in[y - 1, x + 1] wherever that lies inside."""
    x = torch.randn(1, 1, 8, 10)
    out = apply_jitter(x, Jitter(2, 1.0, 1, 3, False))
    torch.testing.assert_close(out[..., 1:, :-1], x[..., :-1, 1:])


def test_sampled_jitters_keep_the_size_and_use_every_component():
    torch.manual_seed(0)
    draws = [sample_jitter(16, 20, max_pad=4, max_zoom=2.0) for _ in range(200)]
    assert any(d.flip for d in draws) and any(not d.flip for d in draws)
    assert any(d.zoom > 1 for d in draws) and any(d.zoom == 1 for d in draws)
    for d in draws[:20]:
        assert apply_jitter(torch.zeros(1, 1, 16, 20), d).shape == (1, 1, 16, 20)


def test_simple_downsampler_starts_as_patch_averaging():
    hr = torch.randn(2, 4, 24, 32)
    torch.testing.assert_close(SimpleDownsampler(8)(hr, (3, 4)), F.avg_pool2d(hr, 8))


def test_attention_downsampler_pools_constants_to_constants():
    down = AttentionDownsampler(4, 12).eval()
    hr = torch.full((2, 4, 24, 32), 3.0)
    torch.testing.assert_close(down(hr, (3, 4)), torch.full((2, 4, 3, 4), 3.0))


def test_downsampler_bad_geometry():
    with pytest.raises(ValueError, match="must cover a cell of 8 pixels"):
        SimpleDownsampler(4)(torch.randn(1, 2, 24, 32), (3, 4))
    with pytest.raises(ValueError, match="do not tile"):
        SimpleDownsampler(8)(torch.randn(1, 2, 24, 30), (3, 4))


def test_gaussian_nll_by_hand():
    pred, target, scale = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])
    expected = ((1 / 2 + 0.0) + (4 / 8 + torch.log(torch.tensor(2.0)))) / 2
    torch.testing.assert_close(gaussian_nll(pred, target, scale), expected)


def test_total_variation_by_hand():
    x = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    torch.testing.assert_close(total_variation(x), torch.tensor((4 + 9) / 2 + (1 + 4) / 2))


def test_random_projection_is_an_unbiased_scaled_squared_norm():
    torch.manual_seed(0)
    r = torch.randn(1, 64, 1, 1)
    proj = random_projection(1, 64, 20000, r)
    estimate = torch.einsum("bchw,bcd->bdhw", r, proj).square().mean()
    torch.testing.assert_close(estimate, r.square().sum() / 64, rtol=0.05, atol=0)


class PixelIdentity(Upsampler):
    """The perfect upsampler for a patch-mean backbone: the image itself on the pixel grid."""

    name = "pixel_identity_for_tests"
    scale = None

    def __init__(self) -> None:
        super().__init__(3, 8)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def upsample_to(self, features, image, size, backbone):
        return image + self.dummy


def test_perfect_upsampler_has_zero_reconstruction_loss():
    """Tokens = patch means of the image; F_hr = the image: every jittered view is explained exactly."""
    torch.manual_seed(0)
    backbone = ToyBackbone(3, 8, mean=True)
    objective = create_objective("featup_multiview", num_jitters=4, max_pad=4, downsampler="simple",
                                 projection_dim=None, uncertainty=False)
    objective.setup(backbone)
    losses = objective(backbone, PixelIdentity(), torch.rand(2, 3, 32, 40))
    assert losses["loss_reconstruction"] < 1e-10


def test_objective_trains_the_downsampler_and_scale_head_with_the_upsampler():
    torch.manual_seed(0)
    backbone = ToyBackbone(6, 8)
    objective = create_objective("featup_multiview", num_jitters=2, max_pad=4, tv_weight=0.1, magnitude_weight=0.1)
    objective.setup(backbone)
    from wrc import create_upsampler

    up = create_upsampler("featup_jbu", 6, 8, num_layers=3)
    losses = objective(backbone, up, torch.rand(2, 3, 32, 40))
    assert {"loss", "loss_reconstruction", "loss_tv", "loss_magnitude"} <= set(losses)
    losses["loss"].backward()
    for module in (objective.downsampler, objective.scale_net, up.layers[0]):
        assert all(p.grad is not None for p in module.parameters())
