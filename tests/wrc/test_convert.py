"""Converting the released LiFT and FeatUp-JBU weights: state dicts with the originals' names and shapes (random
values), checked against the originals' forward passes re-stated here from their descriptions."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from wrc import load_upsampler
from wrc.convert import convert_featup_jbu_state_dict, convert_lift_state_dict, main

# ----------------------------------------------------------------------------------------------------------------
# LiFT (saksham-s/lift)
# ----------------------------------------------------------------------------------------------------------------


def lift_original_state(channels: int, width: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """The original's keys: image_convs_1 = conv, BN, ReLU, conv, BN, ReLU; image_convs_2 = conv, BN, ReLU (the
    convs with biases); up1.up a 2x2 transposed conv; up1.conv_1.double_conv = conv, BN, ReLU, conv, BN, ReLU
    (no biases); outc a 1x1 conv."""
    g = torch.Generator().manual_seed(seed)
    fused = channels + width
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out_ch: int, in_ch: int, k: int, bias: bool = True) -> None:
        state[f"{name}.weight"] = torch.randn(out_ch, in_ch, k, k, generator=g) / (in_ch * k * k) ** 0.5
        if bias:
            state[f"{name}.bias"] = torch.randn(out_ch, generator=g)

    def bn(name: str, ch: int) -> None:
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(ch, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(ch, generator=g)
        state[f"{name}.running_mean"] = torch.randn(ch, generator=g)
        state[f"{name}.running_var"] = 0.5 + torch.rand(ch, generator=g)
        state[f"{name}.num_batches_tracked"] = torch.tensor(100)

    conv("image_convs_1.0", width, 3, 3), bn("image_convs_1.1", width)
    conv("image_convs_1.3", width, width, 3), bn("image_convs_1.4", width)
    conv("image_convs_2.0", width, width, 3), bn("image_convs_2.1", width)
    state["up1.up.weight"] = torch.randn(fused, fused // 2, 2, 2, generator=g) / fused**0.5
    state["up1.up.bias"] = torch.randn(fused // 2, generator=g)
    conv("up1.conv_1.double_conv.0", channels // 2, fused // 2 + width, 3, bias=False)
    bn("up1.conv_1.double_conv.1", channels // 2)
    conv("up1.conv_1.double_conv.3", channels // 2, channels // 2, 3, bias=False)
    bn("up1.conv_1.double_conv.4", channels // 2)
    conv("outc", channels, channels // 2, 1)
    return state


def lift_original_forward(state: dict[str, torch.Tensor], features: torch.Tensor, image: torch.Tensor,
                          patch: int) -> torch.Tensor:
    """The original LiFT on an image already normalised as it expects."""

    def conv_bn_relu(x: torch.Tensor, conv: str, norm: str, stride: int) -> torch.Tensor:
        x = F.conv2d(x, state[f"{conv}.weight"], state.get(f"{conv}.bias"), stride=stride, padding=1)
        x = F.batch_norm(x, state[f"{norm}.running_mean"], state[f"{norm}.running_var"], state[f"{norm}.weight"],
                         state[f"{norm}.bias"], training=False, eps=1e-5)
        return F.relu(x)

    x = conv_bn_relu(image, "image_convs_1.0", "image_convs_1.1", 2)
    x = conv_bn_relu(x, "image_convs_1.3", "image_convs_1.4", 2)
    imgs_1 = F.max_pool2d(x, 2) if patch == 16 else x
    imgs_2 = conv_bn_relu(imgs_1, "image_convs_2.0", "image_convs_2.1", 2)
    y = F.conv_transpose2d(torch.cat([features, imgs_2], 1), state["up1.up.weight"], state["up1.up.bias"], stride=2)
    y = torch.cat([y, imgs_1], 1)
    y = conv_bn_relu(y, "up1.conv_1.double_conv.0", "up1.conv_1.double_conv.1", 1)
    y = conv_bn_relu(y, "up1.conv_1.double_conv.3", "up1.conv_1.double_conv.4", 1)
    return F.conv2d(y, state["outc.weight"], state["outc.bias"])


@pytest.mark.parametrize(("patch", "norm"), [(16, "half"), (8, "imagenet")])
def test_lift_conversion_gives_the_originals_outputs(patch, norm):
    state = lift_original_state(16)
    up = convert_lift_state_dict(state, patch_size=patch, guidance_norm=norm).double()
    assert not up.training and up.image_stem[0][0].bias is None  # the biases were folded into the BatchNorms
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 16, 3, 4, generator=g, dtype=torch.float64)
    image = torch.rand(2, 3, 3 * patch, 4 * patch, generator=g, dtype=torch.float64)
    mean, std = ((0.5,) * 3, (0.5,) * 3) if norm == "half" else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    normalised = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    expected = lift_original_forward({k: v.double() for k, v in state.items()}, features, normalised, patch)
    # float64 forward; the folded running means and the normalisation constants carry float32 rounding (~1e-8)
    torch.testing.assert_close(up(features, image), expected, rtol=1e-6, atol=1e-6)


def test_lift_bias_fold_keeps_the_batchnorm_exact():
    state = lift_original_state(8, width=4)
    up = convert_lift_state_dict(state, patch_size=16)
    torch.testing.assert_close(up.image_stem[0][1].running_mean,
                               state["image_convs_1.1.running_mean"] - state["image_convs_1.0.bias"])
    torch.testing.assert_close(up.image_down[1].running_var, state["image_convs_2.1.running_var"])


def test_lift_of_another_layout_lists_the_unmatched_keys():
    state = lift_original_state(8, width=4)
    state["up1.conv_1.extra.weight"] = torch.zeros(1)
    state["mystery"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unmatched keys \[mystery, up1.conv_1.extra.weight\]"):
        convert_lift_state_dict(state, patch_size=16)
    with pytest.raises(ValueError, match=r"no lift upsampler in this state dict: no key ends in "
                                         r"'image_convs_1.0.weight'"):
        convert_lift_state_dict(jbu_original_state(8), patch_size=16)
    renamed = {k.replace("outc", "head"): v for k, v in lift_original_state(8, width=4).items()}
    with pytest.raises(ValueError, match=r"unmatched keys \[head.bias, head.weight\]"):
        convert_lift_state_dict(renamed, patch_size=16)


# ----------------------------------------------------------------------------------------------------------------
# FeatUp JBU stack (mhamilton723/FeatUp)
# ----------------------------------------------------------------------------------------------------------------


def jbu_original_state(channels: int, layers: int = 4, key_dim: int = 32, radius: int = 3,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """upN.{range_temp, sigma_spatial} scalars, upN.range_proj.{0,3} (3 -> key_dim -> key_dim 1x1 convs),
    upN.fixup_proj.{0,3} (taps + 3 -> taps -> taps) and the stack's fixup_proj.1 (C -> C)."""
    g = torch.Generator().manual_seed(seed)
    taps = (2 * radius + 1) ** 2
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out_ch: int, in_ch: int) -> None:
        state[f"{name}.weight"] = torch.randn(out_ch, in_ch, 1, 1, generator=g) / in_ch**0.5
        state[f"{name}.bias"] = 0.1 * torch.randn(out_ch, generator=g)

    for n in range(1, layers + 1):
        state[f"up{n}.range_temp"] = 0.3 * torch.randn((), generator=g)
        state[f"up{n}.sigma_spatial"] = 1 + 0.2 * torch.randn((), generator=g)
        conv(f"up{n}.range_proj.0", key_dim, 3), conv(f"up{n}.range_proj.3", key_dim, key_dim)
        conv(f"up{n}.fixup_proj.0", taps, taps + 3), conv(f"up{n}.fixup_proj.3", taps, taps)
    conv("fixup_proj.1", channels, channels)
    return state


def jbu_original_forward(state: dict[str, torch.Tensor], features: torch.Tensor, image: torch.Tensor,
                         radius: int = 3) -> torch.Tensor:
    """The original stack in eval mode on the ImageNet-normalised image: per layer, the guidance adaptively
    average-pooled to 2x the source; keys by an MLP; the 49 logits <k_p, k_q> from an unfold of the
    reflect-padded keys, softmax at temperature exp(t); times the Gaussian on linspace(-1, 1); normalised; plus
    0.1 * MLP([kernel; guidance]); applied to the bicubic 2x features, reflect-padded; then the residual 1x1
    conv and a plain bilinear resize to the image size."""
    d = 2 * radius + 1
    grid = torch.linspace(-1, 1, d, dtype=features.dtype)
    dist_sq = (grid[:, None] ** 2 + grid[None, :] ** 2).reshape(1, d * d, 1, 1)

    def mlp(x: torch.Tensor, name: str) -> torch.Tensor:
        x = F.gelu(F.conv2d(x, state[f"{name}.0.weight"], state[f"{name}.0.bias"]))
        return F.conv2d(x, state[f"{name}.3.weight"], state[f"{name}.3.bias"])

    def unfold(x: torch.Tensor) -> torch.Tensor:  # (B, C, taps, H, W)
        b, c, h, w = x.shape
        return F.unfold(F.pad(x, [radius] * 4, mode="reflect"), d).view(b, c, d * d, h, w)

    n = 1
    while f"up{n}.range_temp" in state:
        h, w = 2 * features.shape[-2], 2 * features.shape[-1]
        guidance = F.adaptive_avg_pool2d(image, (h, w))
        keys = mlp(guidance, f"up{n}.range_proj")
        logits = torch.einsum("bchw,bcthw->bthw", keys, unfold(keys))
        range_kernel = torch.softmax(logits * state[f"up{n}.range_temp"].exp().clamp(1e-4, 1e4), dim=1)
        kernel = range_kernel * torch.exp(-dist_sq / (2 * state[f"up{n}.sigma_spatial"] ** 2))
        kernel = kernel / kernel.sum(1, keepdim=True).clamp_min(1e-7)
        kernel = kernel + 0.1 * mlp(torch.cat([kernel, guidance], 1), f"up{n}.fixup_proj")
        up = F.interpolate(features, size=(h, w), mode="bicubic", align_corners=False)
        features = (unfold(up) * kernel[:, None]).sum(2)
        n += 1
    features = features + 0.1 * F.conv2d(features, state["fixup_proj.1.weight"], state["fixup_proj.1.bias"])
    if features.shape[-2:] != image.shape[-2:]:
        features = F.interpolate(features, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return features


def imagenet_normalised(image: torch.Tensor) -> torch.Tensor:
    """With the constants rounded to float32, as the upsampler's buffers hold them."""
    mean = torch.tensor([0.485, 0.456, 0.406]).to(image.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).to(image.dtype).view(1, 3, 1, 1)
    return (image - mean) / std


@pytest.mark.parametrize(("patch", "grid"), [(14, (2, 2)), (16, (2, 3))])
def test_jbu_hub_checkpoint_conversion_gives_the_originals_outputs(patch, grid):
    """A hub checkpoint: the stack under ``upsampler.``, beside the backbone and training-time extras. Patch 14
    enlarges the last guidance (28 -> 32) and resizes 32 -> 28 at the end; patch 16 lands on the image."""
    stack = jbu_original_state(8)
    hub = {"model.0.patch_embed.proj.weight": torch.zeros(4, 3, patch, patch), "downsampler.kernel": torch.zeros(3),
           "scale_net.0.weight": torch.zeros(1), **{f"upsampler.{k}": v for k, v in stack.items()}}
    up = convert_featup_jbu_state_dict({"state_dict": hub}, patch_size=patch).double()
    assert (up.preset, up.in_channels, len(up.layers), up.layers[0].radius) == ("paper", 8, 4, 3)
    g = torch.Generator().manual_seed(2)
    features = torch.randn(1, 8, *grid, generator=g, dtype=torch.float64)
    image = torch.rand(1, 3, grid[0] * patch, grid[1] * patch, generator=g, dtype=torch.float64)
    expected = jbu_original_forward({k: v.double() for k, v in stack.items()}, features, imagenet_normalised(image))
    # float64 throughout; the constants the layers hold (window offsets, ImageNet statistics) are float32: ~1e-8
    torch.testing.assert_close(up(features, image), expected, rtol=1e-7, atol=1e-7)
    antialiased = convert_featup_jbu_state_dict(stack, patch_size=patch).double()
    antialiased.guidance_resize, antialiased.final_antialias = "bilinear", True  # the antialiased preset
    assert (antialiased(features, image) - expected).abs().max() > 1e-3


def test_jbu_shapes_give_channels_depth_radius_and_key_width():
    up = convert_featup_jbu_state_dict(jbu_original_state(6, layers=2, key_dim=4, radius=1), patch_size=16)
    assert (up.in_channels, len(up.layers), up.layers[0].radius, up.layers[0].range_mlp[0].out_channels) == \
        (6, 2, 1, 4)


def test_jbu_of_another_layout_lists_the_unmatched_keys():
    state = jbu_original_state(8, layers=2)
    state["up2.range_mlp.0.weight"] = state.pop("up2.range_proj.0.weight")
    with pytest.raises(ValueError, match=r"unmatched keys \[up2.range_mlp.0.weight\]; keys of the upsampler left "
                                         r"without a value \[layers.1.range_mlp.0.weight\]"):
        convert_featup_jbu_state_dict(state, patch_size=16)
    with pytest.raises(ValueError, match=r"no featup_jbu upsampler in this state dict"):
        convert_featup_jbu_state_dict(lift_original_state(8, width=4), patch_size=16)
    two = {**{f"a.{k}": v for k, v in state.items()}, **{f"b.{k}": v for k, v in state.items()}}
    with pytest.raises(ValueError, match=r"several featup_jbu upsamplers .*\['a.', 'b.'\]\): pass prefix="):
        convert_featup_jbu_state_dict(two, patch_size=16)


# ----------------------------------------------------------------------------------------------------------------
# python -m wrc.convert: a normal checkpoint, loadable by wrc.load_upsampler
# ----------------------------------------------------------------------------------------------------------------


def test_command_line_round_trip_through_load_upsampler(tmp_path):
    torch.save(lift_original_state(64), tmp_path / "lift.pth")
    torch.save({"state_dict": {f"upsampler.{k}": v for k, v in jbu_original_state(64, layers=2).items()}},
               tmp_path / "jbu.ckpt")
    assert main(["--format", "lift", "--input", str(tmp_path / "lift.pth"), "--out", str(tmp_path / "lift"),
                 "--backbone", "test_vit"]) == 0
    assert main(["--format", "featup_jbu", "--input", str(tmp_path / "jbu.ckpt"), "--out", str(tmp_path / "jbu"),
                 "--patch-size", "16"]) == 0
    g = torch.Generator().manual_seed(3)
    features, image = torch.randn(1, 64, 2, 3, generator=g), torch.rand(1, 3, 32, 48, generator=g)

    lift = load_upsampler(tmp_path / "lift")
    assert lift.guidance_norm == "half"  # test_vit is not a DINO backbone: the original's 0.5 / 0.5
    direct = convert_lift_state_dict(lift_original_state(64), patch_size=16, guidance_norm="half")
    torch.testing.assert_close(lift(features, image), direct(features, image))
    meta = json.loads((tmp_path / "lift" / "step_0000000" / "upsampler.json").read_text())
    assert meta["converted_from"] == {"format": "lift", "input": "lift.pth"}
    assert meta["backbone"] == {"name": "test_vit", "weights": "pretrained"}

    jbu = load_upsampler(tmp_path / "jbu")
    assert jbu.preset == "paper" and jbu.in_channels == 64
    direct = convert_featup_jbu_state_dict(jbu_original_state(64, layers=2), patch_size=16)
    torch.testing.assert_close(jbu(features, image), direct(features, image))


def test_command_line_needs_a_patch_size(capsys):
    with pytest.raises(SystemExit):
        main(["--format", "lift", "--input", "x.pth", "--out", "out"])
    assert "pass --backbone NAME or --patch-size P" in capsys.readouterr().err


def test_command_line_refuses_to_unpickle_more_than_tensors_unless_asked(tmp_path):
    state = lift_original_state(64)
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(lr=1.0)}, tmp_path / "train.ckpt")
    args = ["--format", "lift", "--input", str(tmp_path / "train.ckpt"), "--out", str(tmp_path / "out"),
            "--patch-size", "16"]
    with pytest.raises(SystemExit, match="holds more than tensors .* pass --unsafe-load"):
        main(args)
    assert main([*args, "--unsafe-load"]) == 0 and load_upsampler(tmp_path / "out").in_channels == 64
