"""LoftUp: the parameter count of the reference, the forward against torch's own multi-head attention, the
batch-dependent colour scaling, any output size, and the errors of a backbone-specific model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.toy_backbone import ToyBackbone
from wrc import create_upsampler
from wrc.objectives import create_objective

TINY = {"num_frequencies": 4, "token_frequencies": 1}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomised(channels: int = 12, **kwargs) -> nn.Module:
    """A model whose phases and norms are not at their initial values (zeros and ones would hide mix-ups)."""
    torch.manual_seed(0)
    model = create_upsampler("loftup", channels, 14, **{**TINY, **kwargs})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "phases" in name or "norm" in name:
                p.copy_(torch.randn_like(p))
    return model.eval()


def reference_forward(model: nn.Module, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The description written out: hand-built inputs, torch's MultiheadAttention, no chunking."""
    b, _, height, width = image.shape
    low = image.amin(dim=(0, 2, 3), keepdim=True)
    colour = (image - low) / (image.amax(dim=(0, 2, 3), keepdim=True) - low).clamp_min(1e-4) - 0.5
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    values = torch.cat([rows.expand(b, 1, height, width), cols.expand(b, 1, height, width), colour], dim=1)
    q = model.first_conv(torch.cat([model.fourier(values), colour], dim=1)).flatten(2).transpose(1, 2)
    h, w = features.shape[-2:]
    t_rows, t_cols = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    code = model.token_code(torch.stack([t_rows, t_cols])[None]).expand(b, -1, -1, -1)
    norm = model.feature_norm
    tokens = F.layer_norm(features.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    kv = torch.cat([tokens.permute(0, 3, 1, 2), code], dim=1).flatten(2).transpose(1, 2)
    for layer in model.layers:
        kv_n = layer.norm_kv(kv)
        q = q + layer.attn(layer.norm_q(q), kv_n, kv_n, need_weights=False)[0]
        q = q + layer.ffn(q)
    out = model.final_norm(q).transpose(1, 2).reshape(b, -1, height, width)
    return model.final_conv(out)


class TestLoftUp:
    def test_parameter_count_matches_the_reference(self):
        """4,303,894 for DINOv2-S (modern_peers.md section 3.1), with the reference's breakdown."""
        model = create_upsampler("loftup", 384, 14)
        assert _count(model) == 4_303_894
        assert _count(model.first_conv) == 2_209_882
        assert _count(model.layers) + _count(model.final_norm) == 1_936_736
        assert _count(model.final_conv) == 156_288
        assert (_count(model.feature_norm), _count(model.fourier), _count(model.token_code)) == (768, 200, 20)

    def test_forward_equals_torch_multihead_attention(self, device):
        """Chunked through global_attention (7 queries at a time) = nn.MultiheadAttention on all queries at once."""
        model = _randomised(chunk=7)
        features, image = torch.randn(2, 12, 2, 3), torch.rand(2, 3, 10, 15)  # a 2 x 3 aspect
        with torch.no_grad():
            expected = reference_forward(model, features, image)
            out = model.to(device)(features.to(device), image.to(device))
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)

    def test_any_output_size_is_the_guidance_resized(self):
        model = _randomised()
        features, image = torch.randn(1, 12, 2, 3), torch.rand(1, 3, 28, 42)
        with torch.no_grad():
            for size in [(4, 6), (9, 5), (28, 42), (40, 60)]:
                out = model(features, image, output_size=size)
                assert out.shape == (1, 12, *size) and torch.isfinite(out).all()
            guide = F.interpolate(image, size=(9, 5), mode="bilinear", align_corners=False, antialias=True)
            torch.testing.assert_close(model(features, image, output_size=(9, 5)), model(features, guide))

    def test_output_is_channel_layer_normalised(self):
        model = create_upsampler("loftup", 12, 14, **TINY).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 12, 2, 2), torch.rand(1, 3, 8, 8))
        torch.testing.assert_close(out.mean(dim=1), torch.zeros(1, 8, 8), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.var(dim=1, unbiased=False), torch.ones(1, 8, 8), atol=1e-3, rtol=0)

    def test_colour_scaling_is_over_the_batch_unless_per_image(self):
        features, image = torch.randn(2, 12, 2, 2), torch.rand(2, 3, 8, 8)
        image[1] = image[1] * 0.3 + 0.7  # a batch mate with another colour range
        with torch.no_grad():
            batch = _randomised()
            assert not torch.allclose(batch(features, image)[:1], batch(features[:1], image[:1]), atol=1e-4)
            per_image = _randomised(minmax="image")
            torch.testing.assert_close(per_image(features, image)[:1], per_image(features[:1], image[:1]))

    def test_training_step_changes_every_parameter(self):
        torch.manual_seed(0)
        model = create_upsampler("loftup", 8, 8, **TINY).train()
        objective = create_objective("loftup_stage1", num_jitters=1, tv_weight=0.1)
        backbone = ToyBackbone(8, 8)
        objective.setup(backbone)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=1e-3)
        objective(backbone, model, torch.rand(2, 3, 32, 48))["loss"].backward()
        optimizer.step()
        unchanged = [k for k, p in model.named_parameters() if torch.equal(p, before[k])]
        assert not unchanged

    def test_wrong_channel_count_is_refused(self):
        model = create_upsampler("loftup", 24, 14, **TINY)
        with pytest.raises(ValueError, match=r"built for in_channels=24.*got shape \(1, 32, 2, 2\)"):
            model(torch.randn(1, 32, 2, 2), torch.rand(1, 3, 28, 28))

    @pytest.mark.parametrize("kwargs, message", [
        ({"heads": 5}, r"heads=5 must divide .* 32"),
        ({"minmax": "global"}, r"minmax='global'; expected one of \('batch', 'image'\)"),
        ({"chunk": 0}, "chunk must be >= 1"),
        ({"layers": 0}, "layers must be >= 1"),
    ])
    def test_bad_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            create_upsampler("loftup", 12, 14, **{**TINY, "token_frequencies": 5, **kwargs})
