"""The fast bilateral solver (Barron & Poole, ECCV 2016), used by "TokenCut + BS" to snap a coarse mask to the image.

A pixel lives at (x, y, luma, chroma_u, chroma_v), each coordinate divided by its sigma and floored. Pixels that share
a cell share one vertex of a sparse bilateral grid: the splat matrix S (vertices x pixels, 0/1) sums pixels into
vertices and its transpose slices vertex values back to pixels. The blur B is the sum over the 5 grid dimensions of a
[1, 2, 1] filter, applied only between occupied neighbour vertices, so B = 10 I + (adjacency of occupied neighbours).
S^T B S approximates a bilateral affinity; bistochastization finds a diagonal Dn with Dn B Dn 1 ~ S 1 (the pixel
counts of the vertices) by the paper's iteration n <- sqrt(n * (S 1) / (B n)) from n = 1, run here until the row sums
match to ``BISTOCHASTIC_TOL`` (at most ``BISTOCHASTIC_MAX_ITER`` iterations; the reference implementation runs a fixed
10). As in Barron & Poole's reference procedure, the masses used afterwards are then m = n * (B n), whether or not the
iteration converged (a warning is logged when it did not), so that the smoothness term Dm - Dn B Dn has exactly zero
row sums: a constant stays a fixed point of the smoothing. The smoothed output x = S^T y comes from the vertex-space
problem

    A y = b,   A = lam (Dm - Dn B Dn) + diag(S c),   b = S (c * t),

(t the target, c the per-pixel confidence), solved with Jacobi-preconditioned conjugate gradient (diagonal floored at
``PRECONDITIONER_FLOOR``) started, as the reference does, from the confidence-weighted mean of each vertex,
y0 = S (c * t) / max(S c, ``START_FLOOR``). Luma and chroma are full-range BT.601 YCbCr on the 0..255 scale (the JPEG
convention), so sigma_luma / sigma_chroma are in those units and sigma_spatial in pixels. The defaults are TokenCut's
(reference section G).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndimage
import scipy.sparse as sp

log = logging.getLogger("wrc")
GRID_DIMENSIONS = 5
BISTOCHASTIC_TOL = 1e-10  # max relative row-sum error of Dn B Dn against S 1; typically reached in < 40 iterations
BISTOCHASTIC_MAX_ITER = 200
PRECONDITIONER_FLOOR = 1e-5  # a vertex with no confidence and no neighbours has a zero diagonal in A
START_FLOOR = 1e-10  # the start y0 = S (c t) / max(S c, START_FLOOR): 0 at vertices without confidence
TOKENCUT_CONFIDENCE = 0.999

# Full-range BT.601 (JPEG) RGB -> YCbCr, rows: Y, Cb, Cr; Cb and Cr are offset by 128 so every coordinate is >= 0.
RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114],
                         [-0.168736, -0.331264, 0.5],
                         [0.5, -0.418688, -0.081312]])
YCBCR_OFFSET = np.array([0.0, 128.0, 128.0])


@dataclass(frozen=True)
class BilateralGrid:
    """The occupied vertices of one image's bilateral grid and its splat and blur matrices."""

    coordinates: np.ndarray  # (V, 5) int64 cell of each vertex: x, y, luma, chroma_u, chroma_v
    splat: sp.csr_matrix  # (V, N) 0/1; S @ pixel_values sums pixels into their vertex, S.T @ vertex_values slices
    blur: sp.csr_matrix  # (V, V) symmetric; 2 * 5 on the diagonal, 1 between occupied neighbours

    @property
    def masses(self) -> np.ndarray:
        """S 1: the number of pixels in each vertex (bistochastize returns the masses the solver uses)."""
        return np.asarray(self.splat.sum(axis=1)).ravel()


def pixel_coordinates(reference: np.ndarray, sigma_spatial: float, sigma_luma: float,
                      sigma_chroma: float) -> np.ndarray:
    """(H * W, 5) int64 grid cell of every pixel, row-major: floor of (x, y, Y, Cb, Cr) / sigma."""
    height, width = reference.shape[:2]
    ycbcr = reference.reshape(-1, 3).astype(np.float64) @ RGB_TO_YCBCR.T + YCBCR_OFFSET
    rows, columns = np.divmod(np.arange(height * width), width)
    position = np.stack([columns, rows], axis=1) / sigma_spatial
    colour = ycbcr / np.array([sigma_luma, sigma_chroma, sigma_chroma])
    return np.floor(np.concatenate([position, colour], axis=1)).astype(np.int64)


def build_grid(coordinates: np.ndarray) -> BilateralGrid:
    """Merge pixels with identical cells into vertices and link vertices one cell apart along one dimension."""
    shifted = coordinates - coordinates.min(axis=0) + 1  # >= 1, so a -1 neighbour never wraps into a valid key
    extents = shifted.max(axis=0) + 2
    if np.prod(extents.astype(float)) >= 2.0 ** 62:
        raise ValueError(f"bilateral grid of extents {extents.tolist()} is too large to index; increase the sigmas")
    strides = np.cumprod(np.concatenate([[1], extents[:0:-1]]))[::-1].astype(np.int64)
    pixel_keys = shifted @ strides
    vertex_keys, first_pixel, vertex_of_pixel = np.unique(pixel_keys, return_index=True, return_inverse=True)
    num_vertices, num_pixels = len(vertex_keys), len(pixel_keys)
    splat = sp.csr_matrix((np.ones(num_pixels), (vertex_of_pixel.ravel(), np.arange(num_pixels))),
                          shape=(num_vertices, num_pixels))

    rows, columns = [np.arange(num_vertices)], [np.arange(num_vertices)]
    values = [np.full(num_vertices, 2.0 * GRID_DIMENSIONS)]
    for stride in strides:
        for step in (-stride, stride):
            wanted = vertex_keys + step
            found = np.minimum(np.searchsorted(vertex_keys, wanted), num_vertices - 1)
            occupied = vertex_keys[found] == wanted
            rows.append(np.flatnonzero(occupied))
            columns.append(found[occupied])
            values.append(np.ones(int(occupied.sum())))
    blur = sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
                         shape=(num_vertices, num_vertices))
    return BilateralGrid(coordinates=coordinates[first_pixel], splat=splat, blur=blur)


def bistochastize(grid: BilateralGrid, tol: float = BISTOCHASTIC_TOL,
                  max_iter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, m): n from the paper's iteration n <- sqrt(n * (S 1) / (B n)) from n = 1 until Dn B Dn 1 matches S 1 to
    ``tol`` (relative; at most ``max_iter`` iterations, default ``BISTOCHASTIC_MAX_ITER``), and the masses
    m = n * (B n) that the solver uses, so that Dm - Dn B Dn has zero row sums even when the iteration stopped
    short (logged)."""
    max_iter = BISTOCHASTIC_MAX_ITER if max_iter is None else max_iter
    counts = grid.masses
    n = np.ones_like(counts)
    error = np.inf
    for _ in range(max_iter):
        n = np.sqrt(n * counts / (grid.blur @ n))
        error = float(np.max(np.abs(n * (grid.blur @ n) - counts) / counts))
        if error < tol:
            break
    else:
        log.warning("bilateral solver: bistochastization stopped after %d iterations with a relative row-sum error "
                    "%.3g (tolerance %.3g); using the masses m = n * (B n) of that n", max_iter, error, tol)
    return n, n * (grid.blur @ n)


def solver_system(grid: BilateralGrid, n: np.ndarray, masses: np.ndarray, target: np.ndarray, confidence: np.ndarray,
                  lam: float) -> tuple[sp.csr_matrix, np.ndarray]:
    """A = lam (Dm - Dn B Dn) + diag(S c) and b = S (c * t) on flattened per-pixel target t and confidence c."""
    normalised_blur = sp.diags(n) @ grid.blur @ sp.diags(n)
    a = lam * (sp.diags(masses) - normalised_blur) + sp.diags(grid.splat @ confidence)
    return sp.csr_matrix(a), grid.splat @ (confidence * target)


def jacobi_pcg(a: sp.csr_matrix, b: np.ndarray, start: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Conjugate gradient preconditioned by diag(A) (floored), started at ``start``; stops when |r| <= tol |b|."""
    inverse_diagonal = 1.0 / np.maximum(a.diagonal(), PRECONDITIONER_FLOOR)
    y = np.array(start, dtype=np.float64)
    residual = b - a @ y
    threshold = tol * np.linalg.norm(b)
    z = inverse_diagonal * residual
    direction, rz = z.copy(), residual @ z
    for _ in range(max_iter):
        if np.linalg.norm(residual) <= threshold:
            break
        a_direction = a @ direction
        curvature = direction @ a_direction
        if curvature <= 0:  # direction in the null space (zero-confidence, isolated vertex): nothing left to fit
            break
        step = rz / curvature
        y = y + step * direction
        residual = residual - step * a_direction
        z = inverse_diagonal * residual
        rz, previous = residual @ z, rz
        direction = z + (rz / previous) * direction
    return y


def _check_reference(reference: object) -> np.ndarray:
    if not isinstance(reference, np.ndarray) or reference.dtype != np.uint8:
        kind = getattr(reference, "dtype", type(reference).__name__)
        raise TypeError(f"reference must be a uint8 numpy array (H, W, 3) RGB image; got {kind}")
    if reference.ndim != 3 or reference.shape[2] != 3 or reference.shape[0] == 0 or reference.shape[1] == 0:
        raise ValueError(f"reference must have shape (H, W, 3) with H, W >= 1; got {reference.shape}")
    return reference


def _check_map(argument: str, values: object, shape: tuple[int, int]) -> np.ndarray:
    if not isinstance(values, np.ndarray) or not (values.dtype == bool or np.issubdtype(values.dtype, np.number)):
        kind = getattr(values, "dtype", type(values).__name__)
        raise TypeError(f"{argument} must be a real numpy array of shape {shape} with values in [0, 1]; got {kind}")
    if np.iscomplexobj(values):
        raise TypeError(f"{argument} must be real-valued; got {values.dtype}")
    if values.shape != shape:
        raise ValueError(f"{argument} must have the reference's shape (H, W) = {shape}; got {values.shape}")
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{argument} must hold finite values in [0, 1]; got {np.sum(~np.isfinite(values))} NaN/inf")
    if values.min() < 0 or values.max() > 1:
        raise ValueError(f"{argument} must hold finite values in [0, 1]; got range [{values.min()}, {values.max()}]")
    return values


def _check_positive(argument: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{argument} must be a positive number; got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{argument} must be a finite number > 0; got {value!r}")
    return float(value)


def bilateral_solve(reference: np.ndarray, target: np.ndarray, confidence: np.ndarray, *, sigma_spatial: float = 16,
                    sigma_luma: float = 16, sigma_chroma: float = 8, lam: float = 256.0, tol: float = 1e-5,
                    max_iter: int = 25) -> np.ndarray:
    """Edge-aware smoothing of target guided by reference: (H, W) float64, x = S^T y (may leave [0, 1] slightly).

    reference: (H, W, 3) uint8 RGB; target, confidence: (H, W) in [0, 1]. sigma_spatial in pixels, sigma_luma and
    sigma_chroma in 0..255 YCbCr units; lam weighs smoothness against the confidence-weighted data term; tol and
    max_iter bound the PCG (relative residual |r| / |b|).
    """
    reference = _check_reference(reference)
    shape = reference.shape[:2]
    target = _check_map("target", target, shape)
    confidence = _check_map("confidence", confidence, shape)
    sigmas = [_check_positive(name, value) for name, value in
              (("sigma_spatial", sigma_spatial), ("sigma_luma", sigma_luma), ("sigma_chroma", sigma_chroma))]
    lam, tol = _check_positive("lam", lam), _check_positive("tol", tol)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1; got {max_iter!r}")

    grid = build_grid(pixel_coordinates(reference, *sigmas))
    n, masses = bistochastize(grid)
    a, b = solver_system(grid, n, masses, target.ravel(), confidence.ravel(), lam)
    start = b / np.maximum(grid.splat @ confidence.ravel(), START_FLOOR)
    y = jacobi_pcg(a, b, start, tol, int(max_iter))
    return (grid.splat.T @ y).reshape(shape)


def largest_component(binary: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean map (the first label on ties); empty stays empty."""
    labels, count = ndimage.label(binary)  # scipy's default 2-D structure is the 4-connected cross
    if count == 0:
        return np.zeros_like(binary, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels == 1 + int(np.argmax(sizes))


def refine_mask(reference: np.ndarray, mask: np.ndarray, **solver_kwargs: float) -> tuple[np.ndarray, np.ndarray]:
    """TokenCut's refinement: solve with confidence 0.999 everywhere, then (soft output, binary mask) where the
    binary is the hole-filled (soft > 0.5) restricted to its largest 4-connected component."""
    if "confidence" in solver_kwargs:
        raise TypeError("refine_mask fixes confidence to 0.999 everywhere (TokenCut); call bilateral_solve instead")
    reference = _check_reference(reference)
    mask = _check_map("mask", mask, reference.shape[:2])
    confidence = np.full(mask.shape, TOKENCUT_CONFIDENCE)
    soft = bilateral_solve(reference, mask, confidence, **solver_kwargs)
    return soft, largest_component(ndimage.binary_fill_holes(soft > 0.5))
