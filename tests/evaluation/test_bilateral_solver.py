"""The fast bilateral solver against independent oracles: hand-computed grid cells, a brute-force dense blur, the
bistochastic row-sum property, zero row sums of the smoothness term, the PCG start by hand, a direct sparse solve,
and edge-aware behaviour on two-colour images."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.ndimage as ndimage
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from evaluation.tokencut import bilateral_solver
from evaluation.tokencut.bilateral_solver import (
    bilateral_solve,
    bistochastize,
    build_grid,
    pixel_coordinates,
    refine_mask,
)

RED, BLUE, GREEN, GREY = (255, 0, 0), (0, 0, 255), (0, 160, 0), (128, 128, 128)
# BT.601 full-range YCbCr by hand: red Y = 0.299 * 255 = 76.2, Cb = 128 - 0.1687 * 255 = 85.0, Cr = 128 + 127.5 = 255.5;
# blue Y = 0.114 * 255 = 29.1, Cb = 255.5, Cr = 128 - 0.0813 * 255 = 107.3. Cells with sigmas (16, 16, 8):
RED_CELL, BLUE_CELL = (4, 10, 31), (1, 31, 13)


def two_colour_image(height: int, width: int, left=RED, right=BLUE) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, : width // 2], image[:, width // 2:] = left, right
    return image


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour ramps plus noise: many vertices, most of them with occupied neighbours."""
    rows, columns = np.mgrid[:height, :width]
    ramps = np.stack([columns * 255 / width, rows * 255 / height, 255 - columns * 128 / width], axis=-1)
    return np.clip(ramps + rng.normal(0, 20, ramps.shape), 0, 255).astype(np.uint8)


def dense_blur(cells: np.ndarray) -> np.ndarray:
    """Brute force: 2 * 5 on the diagonal, 1 between cells one step apart along exactly one dimension."""
    distance = np.abs(cells[:, None, :] - cells[None, :, :]).sum(axis=-1)
    return 10.0 * (distance == 0) + 1.0 * (distance == 1)


def test_pixel_cells_by_hand():
    image = two_colour_image(20, 40)
    cells = pixel_coordinates(image, 16, 16, 8).reshape(20, 40, 5)
    assert tuple(cells[3, 5]) == (0, 0, *RED_CELL)  # x = 5, y = 3
    assert tuple(cells[17, 18]) == (1, 1, *RED_CELL)
    assert tuple(cells[19, 39]) == (2, 1, *BLUE_CELL)


def test_every_pixel_in_one_vertex_and_identical_cells_share_it():
    """Pixels drawn from red, blue and the greys 40 / 41 (same luma bin 2, same chroma): the vertex partition is
    exactly 'same 16-px spatial bin and same colour group'."""
    rng = np.random.default_rng(0)
    palette = np.array([RED, BLUE, (40, 40, 40), (41, 41, 41)], dtype=np.uint8)
    choice = rng.integers(0, 4, size=(32, 48))
    grid = build_grid(pixel_coordinates(palette[choice], 16, 16, 7))  # 128 / 7 = 18.3: grey chroma far from a bin edge
    splat = grid.splat.toarray()
    assert set(np.unique(splat)) <= {0.0, 1.0} and np.all(splat.sum(axis=0) == 1)

    rows, columns = np.mgrid[:32, :48]
    label = (np.minimum(choice, 2) * 100 + (rows // 16) * 10 + columns // 16).ravel()
    same_vertex = splat.T @ splat
    assert np.array_equal(same_vertex == 1, label[:, None] == label[None, :])
    assert splat.shape[0] == len(np.unique(label)) == 3 * 2 * 3
    assert np.array_equal(grid.masses, splat.sum(axis=1))


def test_blur_matches_brute_force_neighbours():
    cells = pixel_coordinates(random_image(np.random.default_rng(1), 24, 40), 8, 16, 8)
    grid = build_grid(cells)
    assert np.array_equal(grid.splat.T @ grid.coordinates, cells)
    assert np.array_equal(grid.blur.toarray(), dense_blur(grid.coordinates))


def test_bistochastization_gives_the_vertex_masses_as_row_sums():
    rng = np.random.default_rng(2)
    grid = build_grid(pixel_coordinates(random_image(rng, 48, 64), 8, 16, 8))
    n, masses = bistochastize(grid)
    assert np.all(n > 0)
    normalised = sp.diags(n) @ grid.blur @ sp.diags(n)
    np.testing.assert_allclose(normalised @ np.ones(len(n)), grid.masses, rtol=1e-8)  # the pixel counts S 1
    np.testing.assert_allclose(masses, grid.masses, rtol=1e-8)  # converged: the corrected masses are S 1 too
    assert abs(normalised - normalised.T).max() == 0  # still symmetric


def test_an_unconverged_bistochastization_still_gives_zero_row_sums_and_is_logged(caplog):
    """Two iterations are far from converged: the masses are then n * (B n) (computed here with the brute-force
    dense blur), not the pixel counts, so the smoothness term Dm - Dn B Dn annihilates constants anyway."""
    grid = build_grid(pixel_coordinates(random_image(np.random.default_rng(7), 24, 32), 8, 16, 8))
    with caplog.at_level(logging.WARNING, logger="wrc"):
        n, masses = bistochastize(grid, max_iter=2)
    assert "bistochastization stopped after 2 iterations" in caplog.text
    blur = dense_blur(grid.coordinates)
    np.testing.assert_allclose(masses, n * (blur @ n), rtol=1e-12)
    assert np.abs(masses - grid.masses).max() > 1e-3 * grid.masses.max()  # not the pixel counts
    smoothness = np.diag(masses) - np.diag(n) @ blur @ np.diag(n)
    np.testing.assert_allclose(smoothness.sum(axis=1), 0.0, atol=1e-12 * masses.max())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wrc"):
        bistochastize(grid)
    assert caplog.text == ""  # converged: nothing to report


def test_pcg_starts_at_the_confidence_weighted_mean_of_each_vertex(monkeypatch):
    """sigma_spatial 100 puts the red half and the blue half of a 4 x 8 image in one vertex each. Red half: 8
    pixels t = 0.2, c = 1 and 8 pixels t = 0.8, c = 0.5 -> (8 * 0.2 + 4 * 0.8) / (8 + 4) = 0.4; blue half:
    confidence 0 -> 0."""
    starts = []
    monkeypatch.setattr(bilateral_solver, "jacobi_pcg", lambda a, b, start, tol, max_iter: starts.append(start)
                        or start)
    image = two_colour_image(4, 8)
    target, confidence = np.zeros((4, 8)), np.zeros((4, 8))
    target[:2, :4], confidence[:2, :4] = 0.2, 1.0
    target[2:, :4], confidence[2:, :4] = 0.8, 0.5
    target[:, 4:] = 0.9
    out = bilateral_solve(image, target, confidence, sigma_spatial=100)
    assert len(starts) == 1 and len(starts[0]) == 2
    expected = np.zeros((4, 8))
    expected[:, :4] = 0.4
    np.testing.assert_allclose(out, expected, atol=1e-15)


def test_a_constant_is_a_fixed_point_even_after_a_short_bistochastization(monkeypatch):
    """With 2 bistochastization iterations and 1 PCG iteration a constant target comes back exactly: the start is
    the constant (weighted mean of a constant) and A y0 = b because the smoothness rows sum to zero."""
    monkeypatch.setattr(bilateral_solver, "BISTOCHASTIC_MAX_ITER", 2)
    rng = np.random.default_rng(8)
    image = random_image(rng, 40, 56)
    out = bilateral_solve(image, np.full((40, 56), 0.3), rng.uniform(0.05, 1.0, size=(40, 56)), max_iter=1)
    np.testing.assert_allclose(out, 0.3, atol=1e-12)


def test_pcg_matches_a_direct_sparse_solve():
    rng = np.random.default_rng(3)
    image = random_image(rng, 24, 32)
    target, confidence = rng.uniform(size=(24, 32)), rng.uniform(0.1, 1.0, size=(24, 32))
    lam = 256.0

    grid = build_grid(pixel_coordinates(image, 8, 16, 8))
    (n, _), splat, blur = bistochastize(grid), grid.splat.toarray(), dense_blur(grid.coordinates)
    masses = n * (blur @ n)  # Barron & Poole's masses after bistochastization
    smoothness = np.diag(masses) - np.diag(n) @ blur @ np.diag(n)
    a = lam * smoothness + np.diag(splat @ confidence.ravel())
    direct = splat.T @ spsolve(sp.csr_matrix(a), splat @ (confidence * target).ravel())

    tight = bilateral_solve(image, target, confidence, sigma_spatial=8, lam=lam, tol=1e-12, max_iter=2000)
    np.testing.assert_allclose(tight.ravel(), direct, atol=1e-6)
    # TokenCut's budget (tol 1e-5, at most 25 iterations) stops short of the exact solution but close on average
    default = bilateral_solve(image, target, confidence, sigma_spatial=8, lam=lam)
    assert np.abs(default.ravel() - direct).mean() < 1e-2


def test_a_constant_target_stays_constant():
    rng = np.random.default_rng(4)
    image = random_image(rng, 40, 56)
    out = bilateral_solve(image, np.full((40, 56), 0.3), rng.uniform(0.0, 1.0, size=(40, 56)), tol=1e-10,
                          max_iter=500)
    np.testing.assert_allclose(out, 0.3, atol=1e-8)
    assert out.dtype == np.float64 and out.shape == (40, 56)


def test_edges_of_the_reference_are_preserved_where_a_gaussian_blur_smears_them():
    """Left half red, right half blue; the target steps at the boundary but is blurred (sigma 6) and noisy. The
    solver output is nearly constant within each half and still steps by > 0.5 across the boundary; a Gaussian
    blur at sigma_spatial (16) leaves the two boundary columns within 0.5 of each other."""
    rng = np.random.default_rng(5)
    height, width = 48, 128
    step = np.zeros((height, width))
    step[:, width // 2:] = 1.0
    target = np.clip(ndimage.gaussian_filter(step, 6) + rng.normal(0, 0.1, step.shape), 0, 1)
    out = bilateral_solve(two_colour_image(height, width), target, np.full(step.shape, 0.999))

    left, right = out[:, : width // 2], out[:, width // 2:]
    assert left.std() < 0.02 and right.std() < 0.02
    assert np.all(out[:, width // 2] - out[:, width // 2 - 1] > 0.5)
    assert left.max() < 0.3 and right.min() > 0.7

    blurred = ndimage.gaussian_filter(target, 16)
    assert np.all(np.abs(blurred[:, width // 2] - blurred[:, width // 2 - 1]) < 0.5)


def test_vanishing_smoothness_returns_the_target_where_it_is_trusted():
    """sigma_spatial 1 gives every pixel its own vertex; lam -> 0 leaves only the data term."""
    rng = np.random.default_rng(6)
    image = random_image(rng, 16, 24)
    target = rng.uniform(size=(16, 24))
    confidence = rng.uniform(0.2, 1.0, size=(16, 24))
    confidence[rng.uniform(size=confidence.shape) < 0.1] = 0.0
    out = bilateral_solve(image, target, confidence, sigma_spatial=1, lam=1e-9, tol=1e-12, max_iter=200)
    trusted = confidence > 0
    np.testing.assert_allclose(out[trusted], target[trusted], atol=1e-6)


def test_refine_mask_fills_the_hole_and_drops_the_stray_blob():
    """A green square object on grey with a red hole in it (mask 0 there) and a stray blue blob marked 1."""
    image = np.empty((64, 96, 3), dtype=np.uint8)
    image[:] = GREY
    image[12:44, 16:48] = GREEN
    image[22:32, 26:36] = RED
    image[50:58, 76:86] = BLUE
    mask = np.zeros((64, 96), dtype=bool)
    mask[12:44, 16:48] = True
    mask[22:32, 26:36] = False
    mask[50:58, 76:86] = True

    soft, binary = refine_mask(image, mask)
    assert soft.shape == (64, 96) and binary.dtype == bool
    assert soft[22:32, 26:36].max() < 0.5 and soft[50:58, 76:86].min() > 0.5  # the solver keeps both
    expected = np.zeros((64, 96), dtype=bool)
    expected[12:44, 16:48] = True
    assert np.array_equal(binary, expected)

    soft, binary = refine_mask(image, np.zeros((64, 96)))
    assert not binary.any() and np.abs(soft).max() < 1e-12


def test_refine_mask_binary_fills_holes_and_keeps_the_largest_component(monkeypatch):
    """refine_mask's binary map from a hand-made soft map (the solver replaced): > 0.5, the hole filled, the smaller
    blob dropped; the solver is asked with confidence 0.999 everywhere (TokenCut)."""
    soft = np.zeros((12, 12))
    soft[1:8, 1:8] = 0.9
    soft[4, 4] = 0.1  # a hole
    soft[10:12, 10:12] = 0.7  # a smaller blob
    calls = []
    monkeypatch.setattr(bilateral_solver, "bilateral_solve", lambda reference, target, confidence, **kwargs:
                        calls.append(confidence) or soft)
    out, binary = refine_mask(np.zeros((12, 12, 3), np.uint8), np.zeros((12, 12)))
    expected = np.zeros((12, 12), dtype=bool)
    expected[1:8, 1:8] = True
    assert np.array_equal(binary, expected) and np.array_equal(out, soft)
    assert len(calls) == 1 and np.all(calls[0] == 0.999)


def test_refine_mask_keeps_four_connected_components_apart():
    """Two squares touching only at a corner are two 4-connected components; the larger one wins."""
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    mask = np.zeros((40, 40))
    mask[4:20, 4:20] = 1
    mask[20:30, 20:30] = 1
    _, binary = refine_mask(image, mask, sigma_spatial=1, lam=1e-6)
    assert np.array_equal(binary, mask.astype(bool) & (np.arange(40)[:, None] < 20))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"reference": np.zeros((8, 8, 3), dtype=np.float32)}, TypeError, "reference must be a uint8"),
    ({"reference": np.zeros((8, 8), dtype=np.uint8)}, ValueError, r"reference must have shape \(H, W, 3\)"),
    ({"target": np.zeros((8, 9))}, ValueError, r"target must have the reference's shape \(H, W\) = \(8, 8\)"),
    ({"target": np.full((8, 8), 1.5)}, ValueError, r"target must hold finite values in \[0, 1\]"),
    ({"target": np.full((8, 8), np.nan)}, ValueError, "target must hold finite values"),
    ({"target": [[0.5] * 8] * 8}, TypeError, "target must be a real numpy array"),
    ({"confidence": -np.ones((8, 8))}, ValueError, r"confidence must hold finite values in \[0, 1\]"),
    ({"sigma_spatial": 0}, ValueError, "sigma_spatial must be a finite number > 0"),
    ({"sigma_chroma": "8"}, TypeError, "sigma_chroma must be a positive number"),
    ({"lam": -1.0}, ValueError, "lam must be a finite number > 0"),
    ({"tol": 0.0}, ValueError, "tol must be a finite number > 0"),
    ({"max_iter": 0}, ValueError, "max_iter must be an integer >= 1"),
])
def test_bad_input_names_the_argument(kwargs, error, match):
    arguments = {"reference": np.zeros((8, 8, 3), dtype=np.uint8), "target": np.zeros((8, 8)),
                 "confidence": np.ones((8, 8))}
    arguments.update(kwargs)
    positional = [arguments.pop(name) for name in ("reference", "target", "confidence")]
    with pytest.raises(error, match=match):
        bilateral_solve(*positional, **arguments)


def test_refine_mask_rejects_a_confidence_and_a_bad_mask():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="confidence to 0.999"):
        refine_mask(image, np.zeros((8, 8)), confidence=np.ones((8, 8)))
    with pytest.raises(ValueError, match=r"mask must have the reference's shape"):
        refine_mask(image, np.zeros((4, 8)))
