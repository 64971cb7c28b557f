from __future__ import annotations

import pytest
import torch

from wrc.objectives import create_objective
from wrc.objectives.lift_multiscale import feature_distance
from wrc.upsamplers import Upsampler


class RecordingUpsampler(Upsampler):
    """Returns a constant map and records which grid it was asked to map to which."""

    name = "recording"

    def __init__(self, channels: int) -> None:
        super().__init__(channels, 16)
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[tuple] = []

    def upsample_to(self, features, image, size, backbone):
        self.calls.append((tuple(features.shape[-2:]), tuple(image.shape[-2:]), size))
        return torch.ones(features.shape[0], features.shape[1], *size) + self.bias


def test_feature_distance_hand_computed():
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    b = torch.tensor([0.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    assert feature_distance(a, a * 5, "cosine").item() == pytest.approx(0.0, abs=1e-7)
    assert feature_distance(a, -a, "cosine").item() == pytest.approx(2.0)
    assert feature_distance(a, b, "cosine").item() == pytest.approx(1.0)
    assert feature_distance(a, b, "l1").item() == pytest.approx(2.0)
    assert feature_distance(a, b, "l2").item() == pytest.approx(5.0)


def test_lift_multiscale_pairs_the_right_scales(test_vit):
    """Eq. 1: U(x/2, F(x/2)) -> F(x) and U(x/4, F(x/4)) -> F(x/2)."""
    up = RecordingUpsampler(64)
    objective = create_objective("lift_multiscale", jitter=None)
    images = torch.rand(2, 3, 128, 128)
    losses = objective(test_vit, up, images)
    assert up.calls == [((4, 4), (64, 64), (8, 8)), ((2, 2), (32, 32), (4, 4))]
    # A constant prediction's cosine loss, computed independently of the objective:
    ones = torch.ones(2, 64, 8, 8)
    expected = 1 - torch.nn.functional.cosine_similarity(ones, test_vit(images), dim=1).mean()
    assert losses["loss_x2"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["loss_x2"].item() + losses["loss_x4"].item(), rel=1e-6)
    losses["loss"].backward()  # the loss reaches the upsampler's parameters


def test_scale_weights_are_used(test_vit):
    images = torch.rand(1, 3, 64, 64)
    only_first = create_objective("lift_multiscale", scale_weights=(2.0, 0.0), jitter=None)
    losses = only_first(test_vit, RecordingUpsampler(64), images)
    assert "loss_x4" not in losses
    assert losses["loss"].item() == pytest.approx(2 * losses["loss_x2"].item())


@pytest.mark.parametrize("kwargs, match", [
    ({"distance": "cos"}, "objective.distance"), ({"scale_weights": (1.0, -1.0)}, "objective.scale_weights"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_objective("lift_multiscale", **kwargs)


def test_unknown_objective():
    with pytest.raises(ValueError, match="unknown objective .*'lift'"):
        create_objective("lift")
