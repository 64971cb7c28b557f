"""Upsample Anything: both formulations of the bilateral kernel (streamed, and per cell for integer scales) against
an explicit per-pixel sum, its bilinear fallback, float64 gradients, the fit, and any channel count through one
model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wrc import create_upsampler
from wrc.upsamplers.upsample_anything import bilateral_upsample, parent_tokens

FAST = {"steps": 2}


def explicit(values, guide, guide_lr, params, max_radius):
    """The kernel as written in modern_peers.md section 6, one output pixel and one token at a time."""
    (b, c, h, w), (height, width) = values.shape, guide.shape[-2:]
    sigmas = F.interpolate(params[:, :2].exp(), size=(height, width), mode="bilinear", align_corners=False)
    out = torch.zeros(b, c, height, width, dtype=values.dtype)
    for n in range(b):
        for y in range(height):
            for x in range(width):
                radius = min(max(math.ceil(2 * float(sigmas[n, :, y, x].max())), 1), max_radius)
                py, px = int((y + 0.5) * h / height), int((x + 0.5) * w / width)  # the cell holding the centre
                num, den = torch.zeros(c, dtype=values.dtype), 0.0
                for qy in range(max(0, py - radius), min(h, py + radius + 1)):
                    for qx in range(max(0, px - radius), min(w, px + radius + 1)):
                        log_sx, log_sy, raw, log_sr = params[n, :, qy, qx].tolist()
                        sx, sy, sr = math.exp(log_sx), math.exp(log_sy), math.exp(log_sr)
                        theta = math.pi * math.tanh(raw)
                        du = (qx + 0.5) * width / w - 0.5 - x
                        dv = (qy + 0.5) * height / h - 0.5 - y
                        u = math.cos(theta) * du + math.sin(theta) * dv
                        v = -math.sin(theta) * du + math.cos(theta) * dv
                        colour = float((guide[n, :, y, x] - guide_lr[n, :, qy, qx]).square().sum())
                        weight = math.exp(-u * u / (2 * sx**2) - v * v / (2 * sy**2) - colour / (2 * sr**2))
                        num, den = num + weight * values[n, :, qy, qx], den + weight
                out[n, :, y, x] = num / den
    return out


def _case(h=3, w=4, height=9, width=10, channels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(1, channels, h, w, generator=g, dtype=torch.float64)
    guide = torch.rand(1, 3, height, width, generator=g, dtype=torch.float64)
    guide_lr = torch.rand(1, 3, h, w, generator=g, dtype=torch.float64)
    params = torch.stack([
        math.log(0.8) + 0.5 * torch.rand(h, w, generator=g, dtype=torch.float64),  # sigma_x: radius 2 or 3
        math.log(0.8) + 0.5 * torch.rand(h, w, generator=g, dtype=torch.float64),
        torch.randn(h, w, generator=g, dtype=torch.float64),  # theta_raw
        math.log(0.3) + 0.3 * torch.randn(h, w, generator=g, dtype=torch.float64),
    ])[None]
    return values, guide, guide_lr, params


class TestBilateralKernel:
    @pytest.mark.parametrize("chunk", [1, 5, 1000])
    def test_streamed_sum_equals_the_explicit_sum(self, chunk, device):
        """Non-integer scales (9 / 3 rows, 10 / 4 columns), per-pixel radii and the running log-sum-exp."""
        values, guide, guide_lr, params = _case()
        out = bilateral_upsample(*(t.to(device) for t in (values, guide, guide_lr, params)), max_radius=2, chunk=chunk,
                                 min_denominator=1e-300)
        torch.testing.assert_close(out.cpu(), explicit(values, guide, guide_lr, params, max_radius=2))

    @pytest.mark.parametrize("max_elements", [1, 1 << 26])  # one token row per chunk, or all rows at once
    def test_cell_path_equals_the_explicit_sum(self, max_elements, device):
        """Integer scales, 3 rows and 2 columns per cell (non-square cells), batch 2, per-pixel radii: the batched
        per-cell softmax against the per-pixel sum."""
        cases = [_case(h=3, w=4, height=9, width=8, channels=3, seed=seed) for seed in (0, 1)]
        values, guide, guide_lr, params = (torch.cat(parts) for parts in zip(*cases, strict=True))
        out = bilateral_upsample(*(t.to(device) for t in (values, guide, guide_lr, params)), max_radius=2,
                                 min_denominator=1e-300, max_elements=max_elements, path="cells")
        torch.testing.assert_close(out.cpu(), explicit(values, guide, guide_lr, params, max_radius=2))

    def test_cell_path_equals_the_streamed_path(self):
        """Wide kernels (every offset within the radius) and a larger window: the two formulations agree."""
        values, guide, guide_lr, params = _case(h=5, w=6, height=20, width=24, channels=4, seed=3)
        params[:, :2] += math.log(3.0)
        cells, streamed = (bilateral_upsample(values, guide, guide_lr, params, max_radius=3, path=path)
                           for path in ("cells", "stream"))
        torch.testing.assert_close(cells, streamed, rtol=1e-12, atol=1e-12)

    def test_auto_takes_the_cell_path_only_for_integer_scales(self, monkeypatch):
        import wrc.upsamplers.upsample_anything as module

        calls = []
        monkeypatch.setattr(module, "cell_upsample", lambda *a, **k: calls.append(a[1].shape[-2:]))
        values, guide, guide_lr, params = _case(h=3, w=4, height=9, width=10)
        bilateral_upsample(values, guide, guide_lr, params)  # 10 / 4 columns: streamed
        bilateral_upsample(values, guide[..., :8], guide_lr, params)
        assert calls == [(9, 8)]
        with pytest.raises(ValueError, match="path='cells' needs output sizes that are multiples of the grid"):
            bilateral_upsample(values, guide, guide_lr, params, path="cells")
        with pytest.raises(ValueError, match="path must be"):
            bilateral_upsample(values, guide, guide_lr, params, path="dense")

    def test_float32_matches_float64(self, device):
        """The float32 path (what runs on features) against float64, with sigmas of a few pixels."""
        values, guide, guide_lr, params = _case(h=7, w=7, height=21, width=24, channels=3)
        params[:, :2] += math.log(2.0)
        exact = bilateral_upsample(values, guide, guide_lr, params, max_radius=3)
        single = bilateral_upsample(*(t.float().to(device) for t in (values, guide, guide_lr, params)), max_radius=3)
        torch.testing.assert_close(single.cpu().double(), exact, rtol=1e-4, atol=1e-5)

    def test_constant_features_stay_constant(self):
        values, guide, guide_lr, params = _case()
        out = bilateral_upsample(torch.full_like(values, 2.5), guide, guide_lr, params, max_radius=3)
        torch.testing.assert_close(out, torch.full_like(out, 2.5))

    def test_one_token_is_copied_everywhere(self):
        values, guide, _, params = _case(h=1, w=1, height=5, width=7)
        out = bilateral_upsample(values, guide, guide.mean(dim=(2, 3), keepdim=True), params)
        torch.testing.assert_close(out, values.expand_as(out))

    @pytest.mark.parametrize("width", [10, 8])  # streamed, cells
    def test_vanishing_weights_fall_back_to_bilinear(self, width):
        """Weights below 1e-6 in all (white guidance, black tokens, sigma_r = 1e-3): bilinear, as the method says."""
        values, guide, guide_lr, params = _case(width=width)
        params[:, 3] = math.log(1e-3)
        out = bilateral_upsample(values, torch.ones_like(guide), torch.zeros_like(guide_lr), params)
        torch.testing.assert_close(out, F.interpolate(values, size=guide.shape[-2:], mode="bilinear",
                                                      align_corners=False))

    @pytest.mark.parametrize("width", [3, 4])  # streamed, cells (one token row per chunk: max_elements)
    @pytest.mark.parametrize("recompute", [False, True])
    def test_gradcheck(self, recompute, width):
        values, guide, guide_lr, params = _case(h=2, w=2, height=4, width=width)
        params.requires_grad_(True)
        values.requires_grad_(True)
        guide.requires_grad_(True)

        def run(v, g, p):
            return bilateral_upsample(v, g, guide_lr, p, max_radius=1, chunk=4, recompute=recompute, max_elements=60)

        assert torch.autograd.gradcheck(run, (values, guide, params))

    def test_parent_token_holds_the_pixel_centre(self):
        assert parent_tokens(9, 3, torch.device("cpu")).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        # (p + 0.5) 4 / 10 is exactly 1 and 3 at p = 2 and 7: the cell starting there (round(x - 0.5) would give 0, 2)
        assert parent_tokens(10, 4, torch.device("cpu")).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


class TestUpsampleAnything:
    def test_fit_reduces_the_rgb_error(self):
        """An edge between two colours that does not fall on a token boundary: the kernels learn to respect it."""
        image = torch.zeros(1, 3, 32, 48)
        image[..., :, 21:] = 1.0
        image[:, 1, :13] = 0.5
        model = create_upsampler("upsample_anything", 4, 8, steps=6)
        model.fit(image, (4, 6))
        assert model.last_losses[-1] < 0.7 * model.last_losses[0]

    def test_learning_rate_schedule(self):
        """lr 0.1 decayed toward 1e-9 over 5100 steps: after the 51 steps it has fallen to about 0.83 x 0.1."""
        model = create_upsampler("upsample_anything", 4, 8)
        assert model.steps == 51
        assert model.lr * model.gamma**5100 == pytest.approx(1e-9, rel=1e-6)
        assert model.gamma**51 == pytest.approx(0.832, abs=1e-3)

    def test_any_channel_count_and_size(self):
        model = create_upsampler("upsample_anything", 384, 16, **FAST)
        image = torch.rand(1, 3, 32, 48)  # a 2 x 3 aspect
        for channels, size in [(5, (32, 48)), (7, (13, 21))]:
            out = model(torch.randn(1, channels, 2, 3), image, output_size=size)
            assert out.shape == (1, channels, *size) and torch.isfinite(out).all()

    def test_output_is_differentiable_in_the_features(self, device):
        features = torch.randn(1, 3, 2, 3, device=device, requires_grad=True)
        image = torch.rand(1, 3, 16, 24, device=device)
        out = create_upsampler("upsample_anything", 3, 8, **FAST).to(device)(features, image)
        out.sum().backward()
        # every output pixel is a normalised combination of tokens: the gradient of the sum sums to the pixel count
        torch.testing.assert_close(features.grad.sum(dim=(2, 3)).cpu(), torch.full((1, 3), 16.0 * 24))

    def test_fitting_ignores_autocast_and_no_grad(self):
        model = create_upsampler("upsample_anything", 3, 8, **FAST)
        features, image = torch.randn(1, 3, 2, 2), torch.rand(1, 3, 16, 16)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(features.bfloat16(), image)
        assert out.dtype == torch.bfloat16 and len(model.last_losses) == 2

    @pytest.mark.parametrize("kwargs", [{"steps": -1}, {"max_radius": 0}, {"lr": 0.0}, {"chunk": 0}])
    def test_bad_settings(self, kwargs):
        with pytest.raises(ValueError, match="must be"):
            create_upsampler("upsample_anything", 3, 8, **kwargs)

    def test_bad_image(self):
        with pytest.raises(ValueError, match=r"image must be \(B=1, 3, H, W\)"):
            create_upsampler("upsample_anything", 3, 8)(torch.randn(1, 3, 2, 2), torch.rand(1, 1, 16, 16))
