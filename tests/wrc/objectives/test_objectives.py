from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR
from wrc import create_upsampler
from wrc.build import build_objective
from wrc.objectives import create_objective, list_objectives
from wrc.objectives.lift_multiscale import feature_distance
from wrc.upsamplers import Upsampler

ALL = list_objectives()
FAST = {  # shallow overrides of the shipped YAML, so that each case takes about a second
    "featup_multiview": {"num_jitters": 1, "max_pad": 4},
    "srt_distill": {"teacher": {"max_shift": 1}, "scale": 4},
    "uplift_multidepth": {"down_steps": 2},  # 64 px at patch 16: 4, 2 and 1 tokens (3 would need 128 px)
    "loftup_stage2": {"sizes": [32, 48]},  # views of the 64-px test images (the recipe: 224-518 of 896 px)
    "wrc_multicrop": {"num_crops": 1},
}


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


# ----------------------------------------------------------------------------------------------------------------
# The contract, over every registered objective: a config, one loss, gradients to the upsampler
# ----------------------------------------------------------------------------------------------------------------


def shipped_config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "objective" / f"{name}.yaml"), resolve=True)


def test_every_registered_objective_has_a_config():
    configs = {p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml")}
    assert set(ALL) <= configs, f"no config/objective/<name>.yaml for {sorted(set(ALL) - configs)}"


@pytest.mark.parametrize("name", ALL)
def test_objective_contract(name, test_vit):
    """Built from its YAML, set up for the backbone, one loss: a finite scalar to optimise, detached scalars to
    log, and gradients reaching the upsampler and every parameter the objective owns."""
    config = shipped_config(name)
    assert config["name"] == name
    objective = build_objective({**config, **FAST.get(name, {})})
    objective.setup(test_vit)
    upsampler = create_upsampler("lift", test_vit.embed_dim, test_vit.patch_size, image_channels=8)
    torch.manual_seed(0)
    losses = objective(test_vit, upsampler, torch.rand(2, 3, 64, 64))
    loss = losses["loss"]
    assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss)
    for key, value in losses.items():
        assert key.startswith("loss") and value.ndim == 0 and torch.isfinite(value), key
        assert key == "loss" or not value.requires_grad, f"{key} must be detached (it is only logged)"
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in upsampler.parameters())
    for pname, param in objective.named_parameters():  # frozen ones (LoftUp's EMA teacher) are not optimised
        assert not param.requires_grad or (param.grad is not None and param.grad.abs().sum() > 0), pname
