"""LoftUp's two stages: the mask pseudo-target and the Gram affinity by hand, each stage's loss on a case with a
known value, the EMA teacher's update rule, resuming it, and training through the framework."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.conftest import tiny_train_config
from tests.helpers.toy_backbone import ToyBackbone
from wrc import create_upsampler, load_upsampler
from wrc.objectives import create_objective
from wrc.objectives.loftup_stages import central, gram_affinity_loss, mask_blend
from wrc.training import train
from wrc.upsamplers import Upsampler

LOFTUP = {"name": "loftup", "num_frequencies": 4, "token_frequencies": 1}


class Constant(Upsampler):
    """Outputs ``value`` everywhere (not registered): the predictions of the known-value cases."""

    name = "constant_test"

    def __init__(self, in_channels: int, patch_size: int, value: float) -> None:
        super().__init__(in_channels, patch_size)
        self.value = nn.Parameter(torch.tensor(value))

    def upsample_to(self, features, image, size, backbone):
        return self.value.expand(features.shape[0], features.shape[1], *size) + 0 * features.mean()


def _flat_image(colour: float = 0.4, size: int = 32) -> torch.Tensor:
    return torch.full((2, 3, size, size), colour)


class TestPieces:
    def test_mask_blend_by_hand(self):
        """Values 1 3 5 7; mask A on pixels 0-1 (mean 2), mask B on 1-2 (mean 4, later: wins on pixel 1), padding."""
        features = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(1, 1, 1, 4)
        masks = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [-1, -1, -1, -1]]).view(1, 3, 1, 4)
        out = mask_blend(features, masks, alpha=0.8)
        torch.testing.assert_close(out.flatten(), torch.tensor([0.2 + 1.6, 0.6 + 3.2, 1.0 + 3.2, 7.0]))

    def test_mask_blend_without_masks_is_the_identity(self):
        features = torch.randn(2, 3, 4, 5)
        assert torch.equal(mask_blend(features, torch.zeros(2, 0, 4, 5), 0.5), features)
        with pytest.raises(ValueError, match=r"masks must be \(B=2, M, 4, 5\)"):
            mask_blend(features, torch.zeros(2, 1, 4, 4), 0.5)

    def test_gram_affinity_by_hand(self):
        """Student (1, 0), (0, 1): Gram I; teacher (1, 0), (2, 0): Gram of ones. Two of four entries differ by 1."""
        student = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
        teacher = torch.tensor([[1.0, 2.0], [0.0, 0.0]]).view(1, 2, 1, 2)
        assert float(gram_affinity_loss(student, teacher)) == pytest.approx(0.5)

    def test_gram_affinity_equals_the_explicit_gram(self):
        a, b = torch.randn(2, 5, 6, 7, dtype=torch.float64), torch.randn(2, 5, 6, 7, dtype=torch.float64)
        grams = [torch.einsum("bcn,bcm->bnm", *(torch.nn.functional.normalize(x.flatten(2), dim=1),) * 2)
                 for x in (a, b)]
        torch.testing.assert_close(gram_affinity_loss(a, b), (grams[0] - grams[1]).square().mean())

    def test_central_drops_a_tenth_per_side(self):
        assert central(torch.zeros(1, 1, 10, 20), 0.1).shape[-2:] == (8, 16)


class TestStage1:
    def test_known_value(self):
        """One channel: every random projection is +-1, so a prediction off by delta everywhere costs delta^2 in
        reconstruction, and nothing in TV (constant); the mask term is again delta^2 (the blend of a constant)."""
        backbone, delta = ToyBackbone(1, 8, mean=True), 0.3
        up = Constant(1, 8, 0.4 + delta)
        objective = create_objective("loftup_stage1", num_jitters=3, tv_weight=1.0)
        objective.setup(backbone)
        losses = objective(backbone, up, _flat_image())
        assert float(losses["loss_reconstruction"]) == pytest.approx(delta**2, rel=1e-5)
        assert float(losses["loss_tv"]) == pytest.approx(0.0, abs=1e-9)
        masked = create_objective("loftup_stage1", num_jitters=1, mask_weight=1.0)
        masks = torch.zeros(2, 2, 32, 32)
        masks[:, 0, :10], masks[:, 1, 5:20, 3:] = 1, 1
        losses = masked(backbone, up, _flat_image(), masks=masks)
        assert float(losses["loss_mask"]) == pytest.approx(delta**2, rel=1e-5)
        assert float(losses["loss"].detach()) == pytest.approx(2 * delta**2, rel=1e-5)

    def test_mask_term_without_masks_is_an_error(self):
        objective = create_objective("loftup_stage1", mask_weight=1.0)
        with pytest.raises(ValueError, match="SAM-mask term .* no masks were given"):
            objective(ToyBackbone(1, 8), Constant(1, 8, 0.0), _flat_image())

    def test_mask_term_is_off_by_default_and_says_so(self, caplog):
        objective = create_objective("loftup_stage1")
        with caplog.at_level("INFO", logger="wrc"):
            objective.setup(ToyBackbone(4, 8))
        assert objective.mask_weight == 0 and "SAM-mask term is off" in caplog.text


class TestStage2:
    def _objective(self, **kwargs):
        objective = create_objective("loftup_stage2", **{"sizes": [16, 24], "crop_align": 4, "num_jitters": 1,
                                                         **kwargs})
        objective.setup(ToyBackbone(1, 8, mean=True))
        with torch.no_grad():
            objective.scale_net.conv.weight.zero_()
            objective.scale_net.conv.bias.zero_()
        return objective

    def test_known_value(self):
        """Constant student and teacher: equal Gram matrices (affinity 0), no TV; the scale is e^0.1 wherever
        the scale head is zero, so the reconstruction is delta^2 / (2 e^0.2) + 0.1."""
        backbone, delta = ToyBackbone(1, 8, mean=True), 0.3
        objective = self._objective()
        losses = objective(backbone, Constant(1, 8, 0.4 + delta), _flat_image())
        expected = delta**2 / (2 * math.exp(0.2)) + 0.1
        assert float(losses["loss_affinity"]) == pytest.approx(0.0, abs=1e-6)
        assert float(losses["loss_tv"]) == pytest.approx(0.0, abs=1e-9)
        assert float(losses["loss_reconstruction"]) == pytest.approx(expected, rel=1e-5)
        assert float(losses["loss"].detach()) == pytest.approx(expected, rel=1e-5)

    def test_teacher_is_an_ema_updated_every_n_steps(self):
        assert (create_objective("loftup_stage2").ema_every, create_objective("loftup_stage2").ema_decay) == (10, 0.99)
        backbone, student = ToyBackbone(1, 8, mean=True), Constant(1, 8, 1.0)
        objective = self._objective(ema_every=3)
        objective(backbone, student, _flat_image())  # step 0: the teacher copies the student
        with torch.no_grad():
            student.value.fill_(3.0)
        for _ in range(2):  # steps 1-2: no update
            objective(backbone, student, _flat_image())
        assert float(objective.teacher.value) == 1.0 and not objective.teacher.value.requires_grad
        objective(backbone, student, _flat_image())  # step 3
        assert float(objective.teacher.value) == pytest.approx(0.99 * 1.0 + 0.01 * 3.0)

    def test_resume_restores_the_teacher(self):
        backbone = ToyBackbone(1, 8, mean=True)
        first = self._objective()
        first(backbone, Constant(1, 8, 1.0), _flat_image())
        with torch.no_grad():
            first.teacher.value.fill_(5.0)
        resumed = self._objective()
        resumed.load_state_dict(first.state_dict())
        resumed(backbone, Constant(1, 8, 2.0), _flat_image())
        assert float(resumed.teacher.value) == 5.0 and int(resumed.steps) == 2

    def test_size_larger_than_the_images_is_an_error(self):
        objective = self._objective(sizes=[64])
        with pytest.raises(ValueError, match="objective.sizes holds 64, larger than"):
            objective(ToyBackbone(1, 8, mean=True), Constant(1, 8, 0.0), _flat_image())

    def test_any_size_too_large_fails_the_first_step_before_the_state_changes(self):
        """Not only when that size happens to be drawn: the step counter and the teacher stay untouched."""
        objective = self._objective(sizes=[16, 64])
        for _ in range(3):  # whichever size each attempt would draw
            with pytest.raises(ValueError, match="objective.sizes holds 64, larger than"):
                objective(ToyBackbone(1, 8, mean=True), Constant(1, 8, 0.0), _flat_image())
        assert int(objective.steps) == 0 and objective.teacher is None


@pytest.mark.slow
def test_both_stages_train_with_the_framework(tmp_path):
    """Stage 1 for two steps, stage 2 from its checkpoint (the student starts from it), then resumed."""
    first = tiny_train_config(tmp_path / "stage1", train={"max_steps": 2, "ckpt_every": 2})
    first.update(model=LOFTUP, objective={"name": "loftup_stage1", "num_jitters": 1})
    stage1 = train(first)
    second = tiny_train_config(tmp_path / "stage2", train={"max_steps": 1, "ckpt_every": 1})
    second.update(model=LOFTUP, objective={"name": "loftup_stage2", "sizes": [32, 48], "num_jitters": 1,
                                           "num_crops": 1, "init_from": str(stage1.run_dir)})
    stage2 = train(second)
    state = torch.load(stage2.checkpoint / "train_state.pt", weights_only=False)
    teacher = {k.removeprefix("teacher."): v for k, v in state["objective"].items() if k.startswith("teacher.")}
    for key, value in load_upsampler(stage1.checkpoint).state_dict().items():
        torch.testing.assert_close(teacher[key], value)  # the teacher = the stage-1 weights after one step
    resumed = train({**second, "resume": True, "train": {**second["train"], "max_steps": 2}})
    assert resumed.step == 2


def test_init_from_loads_the_stage1_weights(tmp_path):
    from wrc.checkpoint import save_checkpoint

    source = create_upsampler("loftup", 8, 8, num_frequencies=4, token_frequencies=1)
    source.init_kwargs = {"num_frequencies": 4, "token_frequencies": 1}
    meta = {"backbone": {"name": "toy"}, "step": 1, "metrics": {}, "config": {}}
    save_checkpoint(tmp_path / "step_0000001", source, meta)
    student = create_upsampler("loftup", 8, 8, num_frequencies=4, token_frequencies=1)
    objective = create_objective("loftup_stage2", init_from=str(tmp_path / "step_0000001"))
    objective.start(student)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(student.state_dict()[key], value)
        torch.testing.assert_close(objective.teacher.state_dict()[key], value)
