"""JAFAR's low-to-lower-resolution and AnyUp's crop objectives: call patterns, losses of known value, augmentations,
and training steps with the real upsamplers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_train_config
from tests.helpers.toy_backbone import ToyBackbone
from wrc import create_upsampler, load_upsampler
from wrc.layers.guidance import IMAGENET_MEAN, IMAGENET_STD
from wrc.objectives import create_objective
from wrc.objectives.anyup_crops import Photometric, RandomJPEG, aligned_crops
from wrc.objectives.jafar_lowres import BlurNoise
from wrc.training import train
from wrc.upsamplers import Upsampler

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def cos_mse_by_hand(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - cosine, plus the MSE after scaling by the target's per-position range, with explicit loops over pixels."""
    total_cos, total_mse, n = 0.0, 0.0, 0
    for b in range(pred.shape[0]):
        for y in range(pred.shape[2]):
            for x in range(pred.shape[3]):
                p, t = pred[b, :, y, x].double(), target[b, :, y, x].double()
                total_cos += 1 - float(p @ t / (p.norm() * t.norm()))
                low, span = t.min(), t.max() - t.min() + 1e-6
                total_mse += float((((p - low) - (t - low)) / span).square().mean())
                n += 1
    return (total_cos + total_mse) / n


class Stub(Upsampler):
    """Records each call (features grid, guidance size, output size); returns ``answer(call)`` or a constant map."""

    name = "stub"

    def __init__(self, channels: int, answer=None) -> None:
        super().__init__(channels, 8)
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.answer, self.calls = answer, []

    def _check_inputs(self, features, image):  # noqa: D102 - a stub sees the objective's inputs as they are
        assert image.min() >= 0 and image.max() <= 1

    def upsample_to(self, features, image, size, backbone):
        self.calls.append((tuple(features.shape[-2:]), tuple(image.shape[-2:]), tuple(size)))
        out = self.answer(features, size) if self.answer else torch.ones(features.shape[0], features.shape[1], *size)
        return out + self.bias


# ----------------------------------------------------------------------------------------------------------------
# JAFAR
# ----------------------------------------------------------------------------------------------------------------


def test_jafar_pairs_a_lower_resolution_input_with_the_target_and_the_half_size_guidance():
    torch.manual_seed(0)
    backbone, images = ToyBackbone(6, 8), torch.rand(2, 3, 64, 96)  # target grid 8 x 12
    up = Stub(6)
    losses = create_objective("jafar_lowres")(backbone, up, images)
    (low_grid, guide, out), reference, augmented = up.calls
    assert guide == (32, 48) and out == (8, 12)  # 224 of 448 px, the target's grid
    factor = low_grid[0] * 8 / 64
    assert 0.25 <= factor <= 0.5 and low_grid[1] == round(96 * factor / 8)  # one factor for both sides
    assert reference == augmented == ((8, 12), (32, 48), (32, 48))  # 7x from the target features at 224 px
    expected = cos_mse_by_hand(torch.ones(2, 6, 8, 12), backbone(images))  # a constant prediction
    assert losses["loss_main"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_consistency"].item() == pytest.approx(0.0, abs=1e-6)  # both maps constant
    assert losses["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_jafar_input_factors_cover_the_range_in_patch_multiples():
    objective = create_objective("jafar_lowres")
    torch.manual_seed(0)
    sizes = {objective.input_size((448, 448), 14) for _ in range(200)}
    assert {side for side, _ in sizes} == set(range(112, 225, 14))  # 8..16 tokens


def test_jafar_consistency_weight_and_its_known_value():
    """A stub whose answer depends on the guidance through nothing: the consistency term is 0; weight 0 skips it."""
    backbone, images = ToyBackbone(6, 8), torch.rand(1, 3, 32, 32)
    losses = create_objective("jafar_lowres", consistency_weight=0.0)(backbone, Stub(6), images)
    assert "loss_consistency" not in losses and losses["loss"].item() == pytest.approx(losses["loss_main"].item())


def test_blur_noise_blurs_an_impulse_into_the_gaussian_kernel():
    image = torch.zeros(1, 3, 11, 11)
    image[..., 5, 5] = 1.0
    out = BlurNoise(blur_p=1.0, noise_p=0.0, clamp="unit")(image)
    g = torch.exp(-torch.tensor([4.0, 1.0, 0.0, 1.0, 4.0]) / 2)
    kernel = torch.outer(g, g) / g.sum() ** 2  # sigma 1, 5 x 5
    torch.testing.assert_close(out[0, :, 3:8, 3:8], kernel.expand(3, 5, 5))
    assert out[0, :, :3].abs().max() == 0


def test_blur_noise_clamps_the_normalised_image_as_the_original():
    """Without blur or noise, clamping the normalised image to [0, 1] keeps pixels in [mean, mean + std]."""
    image = torch.rand(2, 3, 9, 7)
    out = BlurNoise(blur_p=0.0, noise_p=0.0)(image)
    torch.testing.assert_close(out, torch.maximum(torch.minimum(image, MEAN + STD), MEAN))
    torch.testing.assert_close(BlurNoise(blur_p=0.0, noise_p=0.0, clamp="unit")(image), image)


def test_blur_noise_adds_noise_of_its_scale_in_normalised_units():
    torch.manual_seed(0)
    image = torch.full((1, 3, 64, 64), 0.6)
    out = BlurNoise(blur_p=0.0, noise_p=1.0, noise_std=0.02)(image)
    noise = (out - image) / STD  # 0.6 is above every channel's mean: no clamp at this scale
    assert noise.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("kwargs, match", [
    ({"scale_range": (0.5, 0.25)}, "scale_range"), ({"guidance_scale": 0.0}, "guidance_scale"),
    ({"consistency_weight": -1.0}, "consistency_weight"), ({"augment": {"blur_p": 2.0}}, "augment.blur_p"),
    ({"augment": {"clamp": "none"}}, "augment.clamp"),
])
def test_jafar_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_objective("jafar_lowres", **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# AnyUp
# ----------------------------------------------------------------------------------------------------------------


def test_anyup_crops_match_the_windows_they_cover():
    """An upsampler answering the backbone's tokens on the full image: every patch-aligned crop's tokens equal its
    window (the toy backbone is patch-local), so the crop term is 0 and only the input term remains."""
    torch.manual_seed(0)
    backbone, images = ToyBackbone(6, 8), torch.rand(2, 3, 48, 64)
    full = backbone(images)  # B, C, 6, 8

    def answer(features, size):
        return full.clone() if size == tuple(full.shape[-2:]) else torch.ones(features.shape[0], 6, *size)

    up = Stub(6, answer)
    losses = create_objective("anyup_crops")(backbone, up, images)
    assert up.calls == [((3, 4), (24, 32), (6, 8)), ((3, 4), (24, 32), (24, 32)), ((3, 4), (24, 32), (24, 32))]
    assert losses["loss_crop"].item() == pytest.approx(0.0, abs=1e-6)
    guidance = F.interpolate(images, size=(24, 32), mode="bilinear", align_corners=False, antialias=True)
    expected_input = cos_mse_by_hand(F.avg_pool2d(full, 2), backbone(guidance))
    assert losses["loss_input"].item() == pytest.approx(expected_input, rel=1e-5)
    assert losses["loss_consistency"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(0.1 * expected_input, rel=1e-5)


def test_anyup_misaligned_windows_would_not_match():
    """The same check with the prediction shifted by one cell: the crop term is no longer 0."""
    torch.manual_seed(0)
    backbone, images = ToyBackbone(6, 8), torch.rand(2, 3, 48, 64)
    shifted = backbone(images).roll(1, dims=-1)
    losses = create_objective("anyup_crops", num_crops=8)(backbone, Stub(6, lambda f, s: shifted.clone()), images)
    assert losses["loss_crop"].item() > 0.05


def test_anyup_crop_corners_are_every_patch_corner_and_match_their_windows():
    torch.manual_seed(0)
    rows, cols = torch.arange(48.0).view(1, 1, 48, 1), torch.arange(64.0).view(1, 1, 1, 64)
    images = (rows * 1000 + cols).expand(2, 3, 48, 64)  # a pixel's value names its position
    pred = (torch.arange(6.0).view(6, 1) * 100 + torch.arange(8.0)).expand(2, 1, 6, 8)  # cell (y, x) -> 100 y + x
    crops, windows = aligned_crops(images, pred, 8, (3, 4), per_image=100)
    assert crops.shape == (200, 3, 24, 32) and windows.shape == (200, 1, 3, 4)
    tops, lefts = windows[:, 0, 0, 0] // 100, windows[:, 0, 0, 0] % 100
    torch.testing.assert_close(crops[:, 0, 0, 0], tops * 8 * 1000 + lefts * 8)  # the crop starts at its window
    assert set(tops.long().tolist()) == {0, 1, 2, 3} and set(lefts.long().tolist()) == {0, 1, 2, 3, 4}


def test_anyup_needs_images_on_twice_the_patch_grid():
    with pytest.raises(ValueError, match="divisible by 2 x patch size = 16"):
        create_objective("anyup_crops")(ToyBackbone(6, 8), Stub(6), torch.rand(1, 3, 40, 48))


def test_photometric_keeps_shape_and_range_and_replays_under_a_seed():
    images = torch.rand(3, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    augment = Photometric()
    torch.manual_seed(5)
    first = augment(images)
    torch.manual_seed(5)
    assert torch.equal(first, augment(images))  # the global torch RNG: a resumed run draws the same
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    assert not torch.allclose(first, images)  # JPEG is always applied


def test_random_jpeg_draws_the_weighted_quality():
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    high = RandomJPEG(weights=(1.0, 0.0, 0.0, 0.0))(image)  # quality 95
    low = RandomJPEG(weights=(0.0, 0.0, 0.0, 1.0))(image)  # quality 40
    assert (high - image).abs().mean() < (low - image).abs().mean()


@pytest.mark.parametrize("kwargs, match", [
    ({"num_crops": -1}, "num_crops"), ({"input_weight": -0.1}, "input_weight"),
    ({"augment_strength": 0.0}, "augment_strength"),
])
def test_anyup_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_objective("anyup_crops", **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Training steps with the real upsamplers
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, objective", [("jafar", "jafar_lowres"), ("anyup", "anyup_crops")])
def test_one_step_changes_the_parameters(model, objective):
    torch.manual_seed(0)
    backbone, images = ToyBackbone(8, 8), torch.rand(2, 3, 48, 64)
    up = create_upsampler(model, 8, 8, dim=16).train()
    before = {name: p.detach().clone() for name, p in up.named_parameters()}
    optimizer = torch.optim.AdamW(up.parameters(), lr=1e-3)
    loss = create_objective(objective)(backbone, up, images)["loss"]
    loss.backward()
    optimizer.step()
    unchanged = {name for name, p in up.named_parameters() if torch.equal(p, before[name])}
    assert torch.isfinite(loss) and unchanged <= {"projection.key_proj.bias"}  # softmax ignores the key bias


@pytest.mark.parametrize("model, objective", [
    ({"name": "jafar", "dim": 16}, {"name": "jafar_lowres"}),
    ({"name": "anyup", "dim": 16}, {"name": "anyup_crops", "num_crops": 2}),
])
def test_trains_with_the_framework(model, objective, tmp_path):
    config = tiny_train_config(tmp_path / "run", train={"max_steps": 2, "ckpt_every": 2})
    config["model"], config["objective"] = model, objective
    result = train(config)
    assert result.step == 2 and result.checkpoint.exists()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    loaded = load_upsampler(result.checkpoint)
    assert loaded.name == model["name"] and loaded.init_kwargs == {"dim": 16}
