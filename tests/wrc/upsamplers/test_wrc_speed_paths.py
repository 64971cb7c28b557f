"""Issue 17: the optimised forward of the guided networks (channels-last after the encoder, in-place residuals,
weight checks before broadcasting, the k = s solve as convolutions without expanding shared maps; the optional
stem with the normalisation and GroupNorm folded in) computes what the old forward computed. The oracle is
benchmarks/wrc_speed_reference.py, the old forward frozen, reading the same parameters; every parameter is
randomised first, so that no path hides behind the near-zero head or the constant weight maps of a fresh model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.wrc_speed_reference import upsample_step as reference_step
from wrc.layers.blocks import GuidanceEncoder, folded_stem
from wrc.layers.guidance import IMAGENET_MEAN, IMAGENET_STD
from wrc.ops.reverse_conv import block_solve_conv, block_solve_reference
from wrc.upsamplers.base import create_upsampler

METHODS = ("wrc", "converse2d", "wrc_tconv")


def randomised(name: str, patch: int, dtype: torch.dtype, seed: int = 0, channels: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_upsampler(name, channels, patch).to(dtype)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
        for param_name, param in model.named_parameters():
            if param_name.endswith(("lam_raw", "alpha_raw", "logits")):
                param.add_(0.3 * torch.randn_like(param))
            elif param.ndim > 1 or param_name.endswith("conv.bias") or param_name.startswith("head."):
                param.copy_(torch.randn_like(param) * (0.5 / param[0].numel() ** 0.5))
    return model.eval()


def inputs(patch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    features = torch.randn(2, 16, 3, 4, dtype=dtype)  # batch 2, non-square grid
    return features, torch.rand(2, 3, 3 * patch, 4 * patch, dtype=dtype)


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_forward_equals_the_old_formulation(name, patch, dtype, tol):
    model = randomised(name, patch, dtype)
    features, image = inputs(patch, dtype)
    with torch.no_grad():
        new, old = model(features, image), reference_step(model, features, image)
    assert new.is_contiguous() and new.dtype == old.dtype
    scale = old.abs().max().item()
    assert scale > 1.0  # the comparison is not between two near-zero maps
    # tol relative to the output's scale: float32 rounding through the randomised network amplifies differences
    # in rounding (channels-last convolutions after the encoder) to ~1e-6 of the scale
    torch.testing.assert_close(new, old, rtol=tol, atol=tol * scale)


# image size -> Winograd tile per call: fuse x 2 and the layer's low-resolution map at the token grid, its
# high-resolution map and out at 2x; at 448 the 2x maps are 64 x 64 (256 tiles of 4 x 4: F(4x4, 3x3)), everything
# else takes F(2x2, 3x3)
WINOGRAD_TILES = {196: [2, 2, 2, 2, 2], 448: [2, 2, 2, 4, 4]}


@pytest.mark.parametrize("size", sorted(WINOGRAD_TILES))
def test_cpu_inference_kernels_equal_the_old_formulation(monkeypatch, size):
    """Where the CPU inference kernels run: 96 channels (the fused width 64, so every 3x3 convolution of 64 or more
    channels is Winograd's, wrc.layers.conv, F(4x4, 3x3) on the 64 x 64 maps of a 448 image) and images of more than
    one band (the full-resolution stage with wrc.ops.pixel_mlp). Both spied; the frozen old forward is the oracle,
    as above."""
    pytest.importorskip("torch_wrc")
    import wrc.layers.full_resolution as stage
    import wrc.ops.winograd as winograd_module

    tiles, moments = [], []

    def tile_spy(x):
        tiles.append(original_tile(x))
        return tiles[-1]

    original_tile = winograd_module.winograd_tile
    monkeypatch.setattr(winograd_module, "winograd_tile", tile_spy)
    original_moments = stage.pixel_mlp_moments
    monkeypatch.setattr(stage, "pixel_mlp_moments", lambda *a, **k: moments.append(1) or original_moments(*a, **k))
    model = randomised("wrc", 14, torch.float32, channels=96)
    torch.manual_seed(1)
    grid = size // 14
    features, image = torch.randn(1, 96, grid, grid), torch.rand(1, 3, size, size)
    with torch.no_grad():
        new, old = model(features, image), reference_step(model, features, image)
    import torch_wrc

    if torch_wrc.is_available():
        assert tiles == WINOGRAD_TILES[size] and len(moments) == 1  # one sample: one pass of moments
    scale = old.abs().max().item()
    assert scale > 1.0
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("name", METHODS)
def test_gradients_equal_the_old_formulation_float64(name, patch):
    model = randomised(name, patch, torch.float64)
    features, image = inputs(patch, torch.float64)
    probe = torch.randn(2, 16, 6, 8, dtype=torch.float64)
    grads = []
    for step in (lambda f: model(f, image), lambda f: reference_step(model, f, image)):
        model.zero_grad()
        f = features.clone().requires_grad_(True)
        (step(f) * probe).sum().backward()
        grads.append({"features": f.grad, **{n: p.grad.clone() for n, p in model.named_parameters()}})
    # Float32 islands that exist in both paths by design carry float32 rounding into float64 gradients:
    # ReverseKernel's softmax, and WRC's weight maps (BoundedMap) and solve (WeightedReverseConv2d casts to fp32).
    for key, new in grads[0].items():
        tol = 1e-5 if name == "wrc" else 1e-6 if key.endswith("kernel.logits") else 1e-9
        old = grads[1][key]
        assert (new - old).abs().max() <= tol * old.abs().max(), key


def test_block_solve_conv_equals_the_blockwise_sherman_morrison():
    """The convolution form of the k = s solve against ``block_solve_reference`` (per-block formulas), with maps
    shared by all channels (one channel, not expanded) and per-channel maps, non-square, batch 2, float64."""
    torch.manual_seed(3)
    y, z = torch.randn(2, 6, 3, 4, dtype=torch.float64), torch.randn(2, 6, 6, 8, dtype=torch.float64)
    kernel = torch.rand(6, 2, 2, dtype=torch.float64) + 0.1
    for maps in (1, 6):
        w_low = 4 * torch.rand(2, maps, 3, 4, dtype=torch.float64)
        w_high = 0.05 + 4 * torch.rand(2, maps, 6, 8, dtype=torch.float64)
        expected = block_solve_reference(y, z, kernel, w_low.expand_as(y), w_high.expand_as(z))
        torch.testing.assert_close(block_solve_conv(y, z, kernel, w_low, w_high), expected, rtol=1e-12, atol=1e-12)
        cl = torch.channels_last
        out = block_solve_conv(y.contiguous(memory_format=cl), z.contiguous(memory_format=cl), kernel, w_low, w_high)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_block_solve_conv_gradcheck_float64():
    torch.manual_seed(4)
    args = (torch.randn(1, 3, 2, 3), torch.randn(1, 3, 4, 6), torch.rand(3, 2, 2) + 0.1,
            4 * torch.rand(1, 1, 2, 3), 0.05 + 4 * torch.rand(1, 1, 4, 6))
    args = tuple(a.double().requires_grad_(True) for a in args)
    assert torch.autograd.gradcheck(block_solve_conv, args)


def test_folded_stem_equals_normalise_conv_groupnorm_relu():
    """Hand-built oracle: normalise, 1x1 conv, GroupNorm, ReLU, term by term in float64 (batch 1 and 2: statistics
    per sample), against the stem folded into one per-sample map."""
    torch.manual_seed(2)
    encoder = GuidanceEncoder(8).double()
    with torch.no_grad():
        encoder.stem[1].weight.uniform_(0.5, 2.0)
        encoder.stem[1].bias.normal_()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    for batch in (1, 2):
        image = torch.rand(batch, 3, 10, 12, dtype=torch.float64)
        torch.testing.assert_close(folded_stem(encoder.stem, image, mean, std), stem_oracle(encoder, image, mean, std),
                                   rtol=1e-10, atol=1e-10)


def test_folded_stem_without_affine_parameters():
    """A GroupNorm without weight and bias (affine=False) folds as well: against normalise, conv, GroupNorm, ReLU."""
    torch.manual_seed(3)
    stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1, bias=False), torch.nn.GroupNorm(4, 8, affine=False),
                               torch.nn.ReLU()).double()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    image = torch.rand(2, 3, 9, 7, dtype=torch.float64)
    expected = F.relu(F.group_norm(F.conv2d((image - mean) / std, stem[0].weight), 4))
    torch.testing.assert_close(folded_stem(stem, image, mean, std), expected, rtol=1e-10, atol=1e-10)


def stem_oracle(encoder, image, mean, std):
    conv = F.conv2d((image - mean) / std, encoder.stem[0].weight)
    groups = conv.view(image.shape[0], encoder.stem[1].num_groups, -1)
    normed = (groups - groups.mean(-1, keepdim=True)) / (groups.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    expected = F.relu(normed.view_as(conv) * encoder.stem[1].weight.view(1, -1, 1, 1)
                      + encoder.stem[1].bias.view(1, -1, 1, 1))
    return expected
