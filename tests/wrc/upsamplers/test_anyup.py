"""AnyUp: parameter layout, any channel count, the attention window against hand-computed windows."""

from __future__ import annotations

import math

import pytest
import torch

from wrc import create_upsampler
from wrc.upsamplers.anyup import neighbourhood_kernel

REFERENCE_PARAMETERS = 878_080  # modern_peers.md section 2.1, counted from the original with C = 384
UNUSED = {"value projection": 128 * 128 + 128, "output projection": 128 * 128 + 128}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def inputs(channels=6, grid=(2, 3), patch=14, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *grid, generator=g),
            torch.rand(batch, 3, grid[0] * patch, grid[1] * patch, generator=g))


def tiny(channels=6, **kwargs):
    torch.manual_seed(0)
    return create_upsampler("anyup", channels, 14, dim=16, heads=4, **kwargs).eval()


def one_hot(grid: tuple[int, int], batch: int = 1) -> torch.Tensor:
    """Token t carries channel t alone: the output then reads out the attention map (raw features as values)."""
    n = grid[0] * grid[1]
    return torch.eye(n).view(1, n, *grid).expand(batch, -1, -1, -1).contiguous()


def test_parameter_count_is_the_reference_less_the_unused_projections():
    for channels in (384, 1024):  # one layout for every backbone
        up = create_upsampler("anyup", channels, 14)
        assert count(up) + sum(UNUSED.values()) == REFERENCE_PARAMETERS
    breakdown = {"guidance.image_encoder": 66_944, "guidance.query_encoder": 82_944, "guidance.key_encoder": 82_944,
                 "aggregate": 361_472, "guidance.rope": 256}
    for name, expected in breakdown.items():
        assert count(up.get_submodule(name)) == expected, name
    assert count(up.unification) + count(up.unified_encoder) == 69_760  # the LFU branch
    assert count(up.query_conv) + count(up.projection) + sum(UNUSED.values()) == 213_760  # cross-attention block


def test_one_model_reads_any_channel_count():
    up = tiny(channels=24)
    _, image = inputs()
    with torch.no_grad():
        for channels in (24, 40):
            feats = torch.randn(2, channels, 2, 3)
            assert up(feats, image, output_size=(5, 7)).shape == (2, channels, 5, 7)


def test_channel_order_does_not_matter():
    """The unification averages over channels, so permuting the input channels permutes the output alike."""
    up, (feats, image) = tiny(channels=6), inputs(channels=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        torch.testing.assert_close(up(feats[:, perm], image), up(feats, image)[:, perm], rtol=1e-5, atol=1e-6)


def test_a_window_of_one_token_copies_the_token():
    """Output grid = token grid and a tiny window: each pixel sees its own token alone, whatever the weights."""
    up, (feats, image) = tiny(window_ratio=0.01), inputs(grid=(4, 5))
    with torch.no_grad():
        torch.testing.assert_close(up(feats, image, output_size=(4, 5)), feats)


def window_rows(n_out: int, n_tokens: int, ratio: float) -> list[set[int]]:
    """The paper's window, written out: the pixel centred at p sees tokens [floor(max(p - r, 0) n), ceil(...))."""
    windows = []
    for y in range(n_out):
        p = (y + 0.5) / n_out
        low, high = math.floor(max(p - ratio, 0) * n_tokens), math.ceil(min(p + ratio, 1) * n_tokens)
        windows.append(set(range(low, high)))
    return windows


def test_window_attention_sees_exactly_the_window():
    grid, size, ratio = (5, 4), (10, 8), 0.15
    up = tiny(channels=20, window_ratio=ratio)
    _, image = inputs(grid=grid, batch=1)
    with torch.no_grad():
        weights = up(one_hot(grid), image, output_size=size)[0].view(*grid, *size)  # token (i, j) at pixel (y, x)
    torch.testing.assert_close(weights.sum(dim=(0, 1)), torch.ones(size))
    rows, cols = window_rows(size[0], grid[0], ratio), window_rows(size[1], grid[1], ratio)
    for y in range(size[0]):
        for x in range(size[1]):
            seen = {(i, j) for i in range(grid[0]) for j in range(grid[1]) if weights[i, j, y, x] > 0}
            assert seen == {(i, j) for i in rows[y] for j in cols[x]}, (y, x)


def test_neighbourhood_attention_sees_the_shifted_k_by_k_tokens():
    """The NATTEN option: k x k tokens around the parent token floor(y h / Ho), shifted inside at the borders."""
    grid, size = (4, 5), (8, 10)
    up = tiny(channels=20, attention="neighbourhood")
    _, image = inputs(grid=grid, batch=1)
    with torch.no_grad():
        weights = up(one_hot(grid), image, output_size=size)[0].view(*grid, *size)
    torch.testing.assert_close(weights.sum(dim=(0, 1)), torch.ones(size))
    k = 3  # odd(max(3, round(0.2 * 4)))

    def taps(pixel: int, n_out: int, n_tokens: int) -> set[int]:
        start = min(max(pixel * n_tokens // n_out - k // 2, 0), n_tokens - k)
        return set(range(start, start + k))

    for y in range(size[0]):
        for x in range(size[1]):
            seen = {(i, j) for i in range(grid[0]) for j in range(grid[1]) if weights[i, j, y, x] > 0}
            assert seen == {(i, j) for i in taps(y, size[0], grid[0]) for j in taps(x, size[1], grid[1])}


@pytest.mark.parametrize("grid, kernel", [((32, 32), 7), ((16, 16), 3), ((16, 40), 3), ((8, 8), 3), ((50, 60), 11)])
def test_neighbourhood_kernel(grid, kernel):
    assert neighbourhood_kernel(grid, 0.1) == kernel


def test_chunking_leaves_the_output_unchanged():
    feats, image = inputs(grid=(3, 4))
    with torch.no_grad():
        torch.testing.assert_close(tiny(chunk_size=7)(feats, image, (6, 9)), tiny()(feats, image, (6, 9)),
                                   rtol=1e-5, atol=1e-6)


def test_non_square_image_and_any_output_size():
    up, (feats, image) = tiny(), inputs(grid=(2, 3))  # a 2 x 3 aspect, 28 x 42 px
    with torch.no_grad():
        assert up(feats, image).shape == (2, 6, 28, 42)
        assert up(feats, image, output_size=(11, 5)).shape == (2, 6, 11, 5)
        assert not torch.allclose(up(feats, image), up(feats, image.flip(-1)))  # the guidance matters


def test_too_few_tokens_are_refused():
    feats, image = inputs(grid=(2, 5))
    with pytest.raises(ValueError, match="a 3 x 3 neighbourhood needs at least 3 tokens per side"):
        tiny(attention="neighbourhood")(feats, image)
    feats, image = inputs(grid=(1, 5))
    with pytest.raises(ValueError, match="'anyup' needs at least 2 x 2 tokens"):
        tiny()(feats, image)


def test_other_widths_still_get_the_base_checks():
    up = tiny(channels=6)
    feats, image = inputs(channels=9)
    feats[0, 4, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="features must hold finite values; got 1 NaN/inf"):
        up(feats, image)
    with pytest.raises(TypeError, match="features must be a floating-point tensor"):
        up(feats.long(), image)
    with pytest.raises(ValueError, match=r"image must be float RGB in \[0, 1\]"):
        up(torch.randn(2, 9, 2, 3), image * 255)
    with pytest.raises(ValueError, match=r"image must be \(B=2, 3, H, W\)"):
        up(torch.randn(2, 9, 2, 3), image[:1])


@pytest.mark.parametrize("kwargs, match", [
    ({"attention": "natten"}, "attention='natten'; expected one of"), ({"window_ratio": 0.0}, "window_ratio must"),
    ({"dim": 20}, "dim must be a multiple of 8"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_upsampler("anyup", 6, 14, **kwargs)
