"""Label propagation: the local-window implementation against the dense formulation and a per-target loop written
from the definition; the context queue, the preprocessing sizes, the first frame's one-hot and the output decoding
(upsampled by the patch size, as the reference) by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.video.davis import read_label, write_label
from evaluation.video.propagation import (
    FramePreprocessing,
    LabelPropagator,
    PropagationConfig,
    labels_from_soft,
    one_hot_labels,
    propagate_dense,
    propagate_local,
    propagate_sequence,
)


def loop_propagation(target, sources, labels, radius, topk, temperature):
    """The definition, one target at a time: every context frame's sources within the Chebyshev radius, the
    entries >= the topk-th largest cosine kept (all ties), weights exp(c / T) normalised, labels averaged."""
    n, d, h, w = sources.shape
    t = target.double() / target.double().norm(dim=0, keepdim=True).clamp_min(1e-12)
    s = sources.double() / sources.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = torch.zeros(labels.shape[1], h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            entries = [(float(t[:, y, x] @ s[c, :, sy, sx]), labels[c, :, sy, sx].double())
                       for c in range(n) for sy in range(max(0, y - radius), min(h, y + radius + 1))
                       for sx in range(max(0, x - radius), min(w, x + radius + 1))]
            values = sorted((v for v, _ in entries), reverse=True)
            threshold = values[min(topk, len(values)) - 1]
            kept = [(math.exp(v / temperature), y_) for v, y_ in entries if v >= threshold]
            total = sum(weight for weight, _ in kept)
            out[:, y, x] = sum(weight * y_ for weight, y_ in kept) / total
    return out


def random_inputs(n, d, h, w, channels, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(d, h, w, generator=gen), torch.randn(n, d, h, w, generator=gen),
            torch.rand(n, channels, h, w, generator=gen))


def tied_inputs(n, d, h, w, channels, seed=0):
    """Features drawn from 3 one-hot vectors: many cosines are exactly 1 (or 0), so the top k is full of ties."""
    gen = torch.Generator().manual_seed(seed)
    pick = lambda *shape: torch.nn.functional.one_hot(torch.randint(3, shape, generator=gen), d).movedim(-1, -3)  # noqa: E731
    return pick(h, w).float(), pick(n, h, w).float(), torch.rand(n, channels, h, w, generator=gen)


CASES = [  # (n, d, h, w, channels, radius, topk): tiled axes, grids smaller than the window or the tile, radius 0
    (3, 16, 20, 37, 4, 5, 5), (8, 16, 34, 40, 3, 12, 5), (2, 8, 3, 4, 3, 12, 5), (1, 4, 1, 1, 2, 0, 5),
    (4, 8, 9, 11, 2, 2, 50), (2, 6, 17, 5, 3, 1, 1), (2, 8, 5, 40, 3, 3, 5), (1, 8, 12, 30, 2, 0, 3),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("make", [random_inputs, tied_inputs], ids=["random", "ties"])
def test_local_windows_give_the_dense_soft_labels(case, make):
    n, d, h, w, channels, radius, topk = case
    target, sources, labels = make(n, d, h, w, channels)
    dense = propagate_dense(target, sources, labels, radius, topk, 0.1)
    for tile in (8, 5):
        local = propagate_local(target, sources, labels, radius, topk, 0.1, tile=tile)
        assert local.shape == (channels, h, w)
        torch.testing.assert_close(local, dense, atol=1e-6, rtol=0)  # the requirement; in practice ~1e-15


@pytest.mark.parametrize("case", [(2, 6, 5, 7, 3, 2, 4), (3, 4, 4, 4, 2, 1, 5), (1, 5, 3, 6, 2, 12, 2)])
@pytest.mark.parametrize("make", [random_inputs, tied_inputs], ids=["random", "ties"])
def test_both_formulations_match_the_definition_target_by_target(case, make):
    n, d, h, w, channels, radius, topk = case
    target, sources, labels = make(n, d, h, w, channels, seed=3)
    expected = loop_propagation(target, sources, labels, radius, topk, 0.1)
    for propagate in (propagate_dense, propagate_local):
        torch.testing.assert_close(propagate(target, sources, labels, radius, topk, 0.1), expected, atol=1e-9, rtol=0)


def test_all_tied_sources_are_kept_and_averaged():
    """Identical features: every source in the window ties with the best, so all are kept with equal weights."""
    sources = torch.ones(2, 3, 4, 5)
    labels = torch.arange(2 * 4 * 5, dtype=torch.float64).view(2, 1, 4, 5)
    soft = propagate_local(torch.ones(3, 4, 5), sources, labels, radius=1, topk=1)
    # target (0, 0): window rows 0-1, cols 0-1 in both frames -> labels 0, 1, 5, 6 and 20, 21, 25, 26
    assert soft[0, 0, 0].item() == pytest.approx((0 + 1 + 5 + 6 + 20 + 21 + 25 + 26) / 8)
    torch.testing.assert_close(propagate_dense(torch.ones(3, 4, 5), sources, labels, radius=1, topk=1), soft)


def test_the_queue_holds_the_first_frame_and_the_last_frames_each_with_its_own_soft_map():
    """The stub tags the soft map it returns for frame f as 100 + f: the context of every step must pair each queued
    frame's features (f) with exactly that map (100 + f), and the first frame's features (0) with its labels (7)."""
    seen = []

    def tagged(target, sources, labels, **kwargs):
        seen.append(list(zip(sources[:, 0, 0, 0].tolist(), labels[:, 0, 0, 0].tolist(), strict=True)))
        return torch.full((1, 2, 2), 100.0 + float(target[0, 0, 0]), dtype=torch.float64)

    first = torch.zeros(1, 2, 2)
    propagator = LabelPropagator(first, torch.full((1, 2, 2), 7.0), PropagationConfig(context_frames=2), tagged)
    returned = [float(propagator.step(torch.full((1, 2, 2), float(frame)))[0, 0, 0]) for frame in range(1, 5)]
    assert returned == [101.0, 102.0, 103.0, 104.0]
    assert seen == [[(0.0, 7.0)], [(0.0, 7.0), (1.0, 101.0)], [(0.0, 7.0), (1.0, 101.0), (2.0, 102.0)],
                    [(0.0, 7.0), (2.0, 102.0), (3.0, 103.0)]]


@pytest.mark.parametrize("preprocess, image_size, original, patch, expected", [
    ("dino", 224, (480, 854), 16, (480, 832)),  # DINO: short side 480, long side floor(854 / 64) * 64
    ("dino", 224, (854, 480), 16, (832, 480)),  # portrait
    ("dino", 224, (480, 854), 14, (476, 826)),  # rounded to the nearest multiple of the patch
    ("dino", 224, (480, 910), 8, (480, 896)),
    ("square", 224, (480, 854), 16, (224, 224)),  # LiFT / WRC
    ("square", 100, (480, 854), 16, (96, 96)),
    ("square", 5, (48, 64), 16, (16, 16)),  # at least one patch
])
def test_processed_sizes(preprocess, image_size, original, patch, expected):
    assert FramePreprocessing(preprocess, image_size, 480).size(*original, patch) == expected


def test_first_frame_labels_are_nearest_resized_one_hot_with_max_plus_one_channels():
    label = np.zeros((8, 8), dtype=np.uint8)
    label[:4, :4] = 1
    label[7, 7] = 3  # too small for a 2 x 2 grid: its channel stays, empty
    label[7, 0] = 255  # void: background
    one_hot = one_hot_labels(label, (2, 2))
    assert one_hot.shape == (4, 2, 2) and one_hot.dtype == torch.float64
    # PIL's nearest resize reads pixel (2 + 4i, 2 + 4j) for cell (i, j): only cell (0, 0) is object 1
    assert one_hot.argmax(0).tolist() == [[1, 0], [0, 0]] and one_hot[3].sum() == 0 and one_hot.sum() == 4


def test_soft_labels_are_min_max_normalised_per_channel_before_the_argmax():
    soft = torch.tensor([[[0.6, 0.9, 0.7]], [[0.1, 0.2, 0.5]], [[0.0, 0.0, 0.0]]], dtype=torch.float64)
    kept = soft.clone()
    # patch 1: no upsampling. normalised: channel 0 -> 0, 1, 1/3; channel 1 -> 0, 1/4, 1; channel 2 stays 0
    # -> argmax 0, 0, 1, then nearest to 2 x 6
    ids = labels_from_soft(soft, 1, (2, 6))
    assert ids.dtype == np.uint8 and ids.tolist() == [[0, 0, 0, 0, 1, 1]] * 2
    assert torch.equal(soft, kept)  # decoding never touches the soft map the queue holds
    constant = torch.tensor([[[0.2, 0.2]], [[0.1, 0.3]]], dtype=torch.float64)  # a constant positive channel -> 1
    assert labels_from_soft(constant, 1, (1, 2)).tolist() == [[0, 0]]


# One grid row of 4 cells (2 tokens of patch 2 on a 2x grid, a 4-pixel processed row); object 1 = v, background
# = 1 - v (both already span [0, 1], so min-max leaves them). DINO / LiFT / WRC upsample by the patch, to 8 pixels:
# pixel x reads s = (x + 0.5) / 2 - 0.5, so v = 0, 0, 0, 0.1, 0.3, 0.55, 0.85, 1 (x = 5: 0.4 + 0.25 * 0.6), object
# 1 where v > 0.5: x >= 5; PIL's nearest 8 -> 4 reads pixel 2 x0 + 1 (1, 3, 5, 7): ids 0, 0, 1, 1. Upsampling to
# the processed 4 pixels instead keeps v = 0, 0, 0.4, 1 and would give 0, 0, 0, 1.
CELLS = torch.tensor([0.0, 0.0, 0.4, 1.0], dtype=torch.float64)
BY_PATCH = [0, 0, 1, 1]


def test_the_output_is_upsampled_by_the_patch_size_as_the_reference():
    soft = torch.stack([1 - CELLS, CELLS])[:, None, :].expand(2, 3, 4)  # three identical rows
    assert labels_from_soft(soft, 2, (3, 4)).tolist() == [BY_PATCH] * 3
    # at the upsampled size itself there is no resize: object 1 exactly where v > 0.5
    assert labels_from_soft(soft, 2, (6, 8)).tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]] * 6


class PatchTwoExtractor:
    """Tokens on patch 2, the upsampler asked for the 2x grid: all that propagate_sequence reads of an extractor."""

    device = torch.device("cpu")
    backbone = SimpleNamespace(patch_size=2)

    def tokens(self, batch):
        return torch.zeros(1, 1, batch.shape[-2] // 2, batch.shape[-1] // 2)

    def upsample(self, tokens, batch, size):
        return torch.zeros(1, 1, *size)


def test_a_propagated_sequence_is_decoded_by_the_patch_size_on_a_2x_grid(tmp_path):
    frames = []
    for t in range(2):
        frames.append(tmp_path / "frames" / f"{t:05d}.png")
        frames[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(frames[-1])
    annotation = tmp_path / "00000.png"
    write_label(annotation, np.array([[0, 0, 1, 1]] * 4, np.uint8))

    def fixed(target, sources, labels, **kwargs):  # the soft map of the hand case on every row of the 4 x 4 grid
        assert target.shape[-2:] == (4, 4)
        return torch.stack([1 - CELLS, CELLS])[:, None, :].expand(2, 4, 4).clone()

    info = propagate_sequence(PatchTwoExtractor(), frames, annotation, tmp_path / "out",
                              FramePreprocessing("square", image_size=4, upsample_factor=2), PropagationConfig(), fixed)
    assert info.processed_size == (4, 4) and info.grid == (4, 4)
    assert read_label(tmp_path / "out" / "00001.png").tolist() == [BY_PATCH] * 4
