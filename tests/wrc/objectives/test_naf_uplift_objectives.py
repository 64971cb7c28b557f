"""NAF's 2x objective and UPLiFT's multi-depth objective: hand-computed loss values on constant scenes, the
recipes' geometry (which features, guidance and output sizes each term uses), a training step that moves every
trained parameter, and a tiny run through the framework's trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import tiny_train_config
from tests.helpers.toy_backbone import ToyBackbone
from wrc import create_upsampler, load_upsampler
from wrc.objectives import create_objective
from wrc.training import train


class Recorder(nn.Module):
    """An upsampler stand-in returning ``value`` everywhere and recording what it was asked."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value, self.calls = value, []
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, features, image, output_size=None):
        self.calls.append((tuple(features.shape[-2:]), tuple(image.shape[-2:]), tuple(output_size)))
        return torch.full((features.shape[0], features.shape[1], *output_size), self.value) + 0 * self.anchor


def constant_images(value: float, size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    return torch.full((batch, 3, *size), value)


# ----------------------------------------------------------------------------------------------------------------
# NAF: naf_downscale
# ----------------------------------------------------------------------------------------------------------------


def test_naf_loss_on_a_constant_scene_and_the_recipe_geometry():
    """Mean-of-patch tokens of a constant 0.3 image are 0.3 everywhere; a prediction of 1 costs (1 - 0.3)^2.
    512 px at patch 16: 32 x 32 targets, the 256 px image's 16 x 16 input, a 128 px guidance (4 x 32 < 224)."""
    backbone = ToyBackbone(6, 16, mean=True)
    stub = Recorder(1.0)
    losses = create_objective("naf_downscale")(backbone, stub, constant_images(0.3, (512, 512), batch=1))
    assert losses["loss"].item() == pytest.approx(0.49, rel=1e-5)
    assert stub.calls == [((16, 16), (128, 128), (32, 32))]


def test_naf_guidance_is_capped_by_guidance_max():
    stub = Recorder()
    create_objective("naf_downscale", guidance_max=96)(ToyBackbone(3, 8, mean=True), stub,
                                                       constant_images(0.5, (256, 384), batch=1))
    assert stub.calls == [((16, 24), (96, 96), (32, 48))]  # 4 x (32, 48) = (128, 192), each side capped at 96


def test_naf_objective_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"objective.input_scale must be in \(0, 1\)"):
        create_objective("naf_downscale", input_scale=2)
    with pytest.raises(ValueError, match="objective.distance='huber'"):
        create_objective("naf_downscale", distance="huber")


# ----------------------------------------------------------------------------------------------------------------
# UPLiFT: uplift_multidepth
# ----------------------------------------------------------------------------------------------------------------


def test_uplift_loss_is_the_weighted_sum_of_six_terms():
    """Constant scene: every target is 0.4, a zero prediction costs 0.16 per term; weights by steps (1, 2, 3)
    count 3, 2 and 1 terms: 0.16 (3 x 1 + 2 x 2 + 1 x 3) = 1.6."""
    backbone = ToyBackbone(6, 8, mean=True)
    stub = Recorder(0.0)
    losses = create_objective("uplift_multidepth", step_weights=[1, 2, 3])(backbone, stub,
                                                                          constant_images(0.4, (64, 128)))
    assert losses["loss"].item() == pytest.approx(1.6, rel=1e-5)
    assert sorted(k for k in losses if k.startswith("loss_level")) == [
        "loss_level1_step1", "loss_level2_step1", "loss_level2_step2",
        "loss_level3_step1", "loss_level3_step2", "loss_level3_step3"]
    # level i: features and guidance of the image / 2^i, one call per finer level (8 x 16 tokens at the top)
    assert stub.calls == [
        ((4, 8), (32, 64), (8, 16)),
        ((2, 4), (16, 32), (4, 8)), ((2, 4), (16, 32), (8, 16)),
        ((1, 2), (8, 16), (2, 4)), ((1, 2), (8, 16), (4, 8)), ((1, 2), (8, 16), (8, 16)),
    ]


def test_uplift_iterate_gives_the_same_loss_as_one_call_per_size():
    """UPLiFT's one-pass ``iterate`` (encoder once) against asking the upsampler for each size in turn."""
    torch.manual_seed(0)
    backbone = ToyBackbone(8, 8)
    up = create_upsampler("uplift", 8, 8, encoder_channels=(4, 8, 8, 12, 16), decoder_channels=20).eval()
    images = torch.rand(1, 3, 64, 64)
    objective = create_objective("uplift_multidepth")
    with torch.no_grad():
        fused = objective(backbone, up, images)

        class PerSize(nn.Module):
            def forward(self, features, image, output_size=None):
                return up(features, image, output_size=output_size)

        separate = objective(backbone, PerSize(), images)
    for key in fused:
        torch.testing.assert_close(fused[key], separate[key])


def test_uplift_objective_needs_sides_divisible_by_patch_times_two_to_the_depth():
    with pytest.raises(ValueError, match=r"divisible by patch x 2\^down_steps = 64"):
        create_objective("uplift_multidepth")(ToyBackbone(3, 8), Recorder(), torch.rand(1, 3, 64, 96))
    with pytest.raises(ValueError, match="objective.step_weights must be 3 non-negative numbers"):
        create_objective("uplift_multidepth", step_weights=[1, 1])


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, kwargs, objective, size", [
    ("naf", {"dim": 32, "kernel": 3}, {"name": "naf_downscale"}, 96),
    ("uplift", {"encoder_channels": (4, 8, 8, 12, 16), "decoder_channels": 20},
     {"name": "uplift_multidepth", "down_steps": 2}, 64),
])
def test_a_training_step_moves_every_parameter(method, kwargs, objective, size):
    torch.manual_seed(0)
    backbone = ToyBackbone(8, 8)
    up = create_upsampler(method, 8, 8, **kwargs).train()
    before = {name: p.detach().clone() for name, p in up.named_parameters()}
    optimizer = torch.optim.AdamW(up.parameters(), lr=1e-3)
    loss = create_objective(**objective)(backbone, up, torch.rand(2, 3, size, size))["loss"]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    unchanged = [name for name, p in up.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged


@pytest.mark.parametrize("model, objective, image_size", [
    ({"name": "naf", "dim": 32, "kernel": 3}, {"name": "naf_downscale"}, 96),
    ({"name": "uplift", "encoder_channels": [4, 8, 8, 12, 16], "decoder_channels": 20},
     {"name": "uplift_multidepth", "down_steps": 2}, 64),
])
def test_trains_and_checkpoints_with_the_framework(model, objective, image_size, tmp_path):
    config = tiny_train_config(tmp_path / "run", train={"max_steps": 2, "ckpt_every": 2},
                               data={"image_size": image_size})
    config["model"], config["objective"] = model, objective
    result = train(config)
    assert result.step == 2 and result.checkpoint.exists()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    loaded = load_upsampler(result.checkpoint)  # rebuilt from the checkpoint's recipe alone
    assert loaded.name == model["name"] and loaded.init_kwargs == {k: v for k, v in model.items() if k != "name"}
