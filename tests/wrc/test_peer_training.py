"""Every peer with parameters trains with the framework; SRT distillation trains a student toward SRT."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_train_config
from tests.helpers.toy_backbone import ToyBackbone
from wrc import create_upsampler
from wrc.objectives import create_objective
from wrc.training import train


@pytest.mark.parametrize("model", [
    {"name": "featup_jbu", "num_layers": 2},
    {"name": "resize_conv", "num_layers": 2},
    {"name": "transposed_conv", "num_layers": 2},
])
def test_peer_trains_and_checkpoints(model, tmp_path):
    config = tiny_train_config(tmp_path / "run", train={"max_steps": 2, "ckpt_every": 2})
    config["model"] = model
    result = train(config)
    assert result.step == 2 and result.checkpoint.exists()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_srt_distill_trains_with_the_framework(tmp_path):
    config = tiny_train_config(tmp_path / "run", train={"max_steps": 2, "ckpt_every": 2})
    config["model"] = {"name": "resize_conv", "num_layers": 2}
    config["objective"] = {"name": "srt_distill", "teacher": {"max_shift": 1}, "scale": 4}
    assert train(config).step == 2


def test_srt_distill_loss_falls_for_a_student():
    """A resize-conv student moves toward the SRT teacher of a toy backbone in a few steps."""
    torch.manual_seed(0)
    backbone = ToyBackbone(6, 8)
    student = create_upsampler("resize_conv", 6, 8, num_layers=1)
    objective = create_objective("srt_distill", teacher={"max_shift": 2}, scale=2, distance="l2")
    images = torch.rand(2, 3, 32, 40)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = objective(backbone, student, images)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_featup_jbu_recipe_trains_its_objective_parameters_and_resumes(tmp_path):
    """The objective's downsampler and scale head are built before the optimiser, trained, and checkpointed."""
    config = tiny_train_config(tmp_path / "run", train={"max_steps": 2, "ckpt_every": 1})
    config["model"] = {"name": "featup_jbu", "num_layers": 2}
    config["objective"] = {"name": "featup_multiview", "num_jitters": 2, "max_pad": 4}
    first = train(config)
    state = torch.load(first.checkpoint / "train_state.pt", weights_only=False)
    assert any(key.startswith("downsampler.") for key in state["objective"])
    assert any(key.startswith("scale_net.") for key in state["objective"])
    resumed = train({**config, "resume": True, "train": {**config["train"], "max_steps": 3}})
    assert resumed.step == 3
