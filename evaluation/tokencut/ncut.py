"""TokenCut's normalised cut on a grid of features: graph, eigen-solvers, bipartition, seed, component, box.

For the N = h * w features of a grid (any facet, any resolution: the backbone's grid or an upsampled one):
1. L2-normalise each feature; S = F F^T, the cosine similarities.
2. The binary graph (TokenCut's default): A_ij = 1 where S_ij > tau, eps elsewhere (eps keeps the graph
   connected); without it (the ``--no-binary-graph`` ablation) A_ij = S_ij where S_ij >= tau, eps elsewhere.
3. D = diag(A 1); x = the eigenvector of the second-smallest eigenvalue of (D - A) x = lambda D x.
4. The bipartition x > mean(x); the seed is argmax |x| (ties up to rounding error go to the first node), and
   the side of the mean holding it is the foreground (TokenCut flips the sign when the seed falls below the
   mean; this is the same partition, and it does not depend on the sign the solver returns).
5. The 4-connected component of the foreground that holds the seed, and its box [xmin, ymin, xmax + 1,
   ymax + 1] in grid cells (``pixel_box`` scales it to pixels and clips it to the image).

Two solvers of step 3 (``SOLVERS``):
- ``"dense"``: scipy.linalg.eigh(D - A, D, subset_by_index=[1, 1]) in float64 on the dense N x N matrices,
  as TokenCut does; O(N^3) time and a few dense N x N float64 arrays.
- ``"lanczos"``: A = s C + eps 11^T, where C holds the kept edges (C = B, the 0/1 graph, and s = 1 - eps for
  the binary graph; C = S - eps on the kept edges and s = 1 otherwise), stored as row blocks that are each
  sparse (CSR) or dense (float64), whichever is smaller; a matvec with A is one matvec with C plus a rank-one
  term, and no dense N x N eigendecomposition is formed. (D - A) x = lambda D x is the symmetric problem
  M y = (1 - lambda) y with M = D^-1/2 A D^-1/2 and y = D^1/2 x. M's top eigenvector is D^1/2 1 (eigenvalue
  1); it is shifted to -1, the bottom of M's spectrum, so the top eigenvector of the shifted operator is
  the one wanted. scipy.sparse.linalg.eigsh (ARPACK's Lanczos) finds it from a fixed start vector
  (deterministic), and x = D^-1/2 y. Grids under ``MIN_LANCZOS_NODES`` nodes use the dense solver.
  The two solvers give the same partition up to a repeated lambda2: when lambda2 = lambda3, every vector of
  that eigenspace is a valid answer and each solver returns its own (three mutually orthogonal clusters give
  three equally good cuts). Lanczos therefore computes the two top eigenpairs of the shifted operator (M's 2nd
  and 3rd, i.e. lambda2 and lambda3; ARPACK restarts with a fresh vector when its Krylov space becomes
  invariant, which is how an exact repeat shows up as two equal values, tested); when
  lambda3 - lambda2 is below ``REPEATED_RTOL`` relative to M's spectral radius (1; the eigenvalues Lanczos
  resolves to ``LANCZOS_TOL`` relative), it logs a warning and returns the dense solver's vector for that grid,
  so that dense is the reference answer in every case.
benchmarks/bench_ncut.py measures both (time with graph building, agreement of the partitions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

log = logging.getLogger("wrc")
SOLVERS = ("dense", "lanczos")
EPS = 1e-5  # TokenCut's weight of the edges below tau
ROW_BLOCK = 1024  # rows of the similarity matrix computed at a time
SPARSE_DENSITY = 0.3  # a row block with fewer kept edges than this share is stored as CSR (12 bytes per edge, not 8
# per entry; CSR matvecs are slower per entry, hence below 8 / 12)
MIN_LANCZOS_NODES = 8  # ARPACK needs room for its Krylov basis; tiny grids go to the dense solver
LANCZOS_TOL = 1e-10  # eigsh's relative accuracy of the eigenvalue
REPEATED_RTOL = 1e-9  # lambda3 - lambda2 below this (M's eigenvalues are <= 1): a repeated lambda2, use dense
START_SEED = 0
SEED_TIE_RTOL = 1e-8  # |x| this close to the maximum is a tie (solver errors are ~1e-12 relative)


@dataclass
class FeatureGraph:
    """A = scale * C + eps 11^T, with C in row blocks (``(start row, CSR or dense float32 block)``)."""

    blocks: list[tuple[int, scipy.sparse.csr_matrix | np.ndarray]]
    size: int
    scale: float
    eps: float

    @property
    def kept_edges(self) -> int:
        return sum(int(b.nnz) if scipy.sparse.issparse(b) else int(np.count_nonzero(b)) for _, b in self.blocks)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """A v (float64 throughout: float32 products leave errors of 1e-7 / eigengap in x, and the gaps of graphs
        whose clusters only eps joins are of order eps)."""
        out = np.empty(self.size, dtype=np.float64)
        for start, block in self.blocks:
            out[start : start + block.shape[0]] = block @ v
        return self.scale * out + self.eps * v.sum()

    def degrees(self) -> np.ndarray:
        sums = np.concatenate([np.asarray(block.sum(axis=1), dtype=np.float64).ravel() for _, block in self.blocks])
        return self.scale * sums + self.eps * self.size

    def dense(self) -> np.ndarray:
        """The N x N affinity matrix A in float64."""
        a = np.empty((self.size, self.size), dtype=np.float64)
        for start, block in self.blocks:
            rows = block.toarray() if scipy.sparse.issparse(block) else block
            a[start : start + rows.shape[0]] = self.scale * rows.astype(np.float64) + self.eps
        return a


def build_graph(features: torch.Tensor, tau: float, eps: float = EPS, binary: bool = True) -> FeatureGraph:
    """The TokenCut graph of (N, d) features (module docstring, step 2), block by block."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, d) with N >= 2 nodes; got shape {tuple(features.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps the graph connected); got {eps}")
    unit = F.normalize(features.detach().float().cpu(), dim=1)
    size, blocks = unit.shape[0], []
    for start in range(0, size, ROW_BLOCK):
        similarity = unit[start : start + ROW_BLOCK] @ unit.T
        kept = similarity > tau if binary else similarity >= tau
        if kept.sum().item() < SPARSE_DENSITY * kept.numel():
            rows, cols = kept.nonzero(as_tuple=True)
            values = np.ones(rows.numel()) if binary else (similarity[rows, cols] - eps).double().numpy()
            block = scipy.sparse.csr_matrix((values, (rows.numpy(), cols.numpy())), shape=tuple(kept.shape),
                                            dtype=np.float64)
        elif binary:
            block = kept.numpy().astype(np.float64)
        else:
            block = torch.where(kept, similarity - eps, torch.zeros(())).numpy().astype(np.float64)
        blocks.append((start, block))
    return FeatureGraph(blocks, size, 1.0 - eps if binary else 1.0, eps)


def dense_eigenvector(graph: FeatureGraph) -> np.ndarray:
    """TokenCut's solve: the generalised eigenvector of the second-smallest eigenvalue, by dense eigh."""
    a = graph.dense()
    d = np.diag(a.sum(axis=1))
    _, vectors = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 1])
    return vectors[:, 0]


def lanczos_eigenvector(graph: FeatureGraph, tol: float = LANCZOS_TOL) -> np.ndarray:
    """The same eigenvector (up to scale and sign) by Lanczos on the shifted normalised operator; the dense
    solver's when lambda2 is repeated (module docstring)."""
    if graph.size < MIN_LANCZOS_NODES:
        return dense_eigenvector(graph)
    inv_sqrt_d = 1.0 / np.sqrt(graph.degrees())
    top = 1.0 / inv_sqrt_d
    top /= np.linalg.norm(top)

    def shifted(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64).ravel()
        return inv_sqrt_d * graph.matvec(inv_sqrt_d * y) - 2.0 * top * (top @ y)

    operator = scipy.sparse.linalg.LinearOperator((graph.size, graph.size), matvec=shifted, dtype=np.float64)
    start = np.random.default_rng(START_SEED).standard_normal(graph.size)
    values, vectors = scipy.sparse.linalg.eigsh(operator, k=2, which="LA", v0=start - top * (top @ start), tol=tol)
    second, third = np.argsort(values)[::-1]  # M's 2nd and 3rd largest: lambda2 = 1 - mu2 <= lambda3 = 1 - mu3
    gap = float(values[second] - values[third])
    if gap < REPEATED_RTOL:
        log.warning("ncut: lambda2 = %.12g is repeated (lambda3 - lambda2 = %.3g on %d nodes): any vector of its "
                    "eigenspace is a cut; using the dense solver's", 1.0 - values[second], gap, graph.size)
        return dense_eigenvector(graph)
    return inv_sqrt_d * vectors[:, second]


def second_eigenvector(graph: FeatureGraph, solver: str) -> np.ndarray:
    if solver == "dense":
        return dense_eigenvector(graph)
    if solver == "lanczos":
        return lanczos_eigenvector(graph)
    raise ValueError(f"solver={solver!r}; expected one of {SOLVERS}")


def bipartition(eigenvector: np.ndarray) -> tuple[np.ndarray, int]:
    """(foreground mask, seed index): the side of the mean that holds argmax |x| (the same for x and -x).

    Nodes with identical rows of A have equal entries of x, and binary graphs have many (every node linked to
    exactly the same others): argmax would then pick by rounding noise, differently per solver. Entries within
    ``SEED_TIE_RTOL`` of the maximum count as equal and the first of them is the seed, which is what argmax
    does with exact ties."""
    magnitude = np.abs(eigenvector)
    seed = int(np.argmax(magnitude >= magnitude.max() * (1 - SEED_TIE_RTOL)))
    above = eigenvector > eigenvector.mean()
    return (above if above[seed] else ~above), seed


def seed_component(foreground: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of the (h, w) foreground holding ``seed`` (row, column)."""
    if not foreground[seed]:
        raise ValueError(f"the seed {seed} is not in the foreground")
    labels, _ = scipy.ndimage.label(foreground)  # scipy's default structure: 4-connectivity
    return labels == labels[seed]


def grid_box(component: np.ndarray) -> tuple[int, int, int, int]:
    """[xmin, ymin, xmax + 1, ymax + 1] of a non-empty (h, w) mask, in grid cells."""
    rows, cols = np.nonzero(component)
    if rows.size == 0:
        raise ValueError("grid_box of an empty mask")
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def pixel_box(box: tuple[int, int, int, int], scale: tuple[float, float], height: int,
              width: int) -> tuple[float, float, float, float]:
    """A grid box in pixels: x by ``scale[1]``, y by ``scale[0]`` (pixels per cell), clipped to width x height."""
    x0, y0, x1, y1 = box
    sy, sx = scale
    return x0 * sx, y0 * sy, min(x1 * sx, float(width)), min(y1 * sy, float(height))


@dataclass
class Cut:
    """The normalised cut of one grid (all arrays (h, w))."""

    eigenvector: np.ndarray
    foreground: np.ndarray
    seed: tuple[int, int]
    component: np.ndarray
    box: tuple[int, int, int, int]  # grid cells


def normalized_cut(features: torch.Tensor, tau: float, *, eps: float = EPS, binary_graph: bool = True,
                   solver: str = "lanczos") -> Cut:
    """TokenCut on (C, h, w) features (module docstring)."""
    if features.ndim != 3:
        raise ValueError(f"features must be (C, h, w); got shape {tuple(features.shape)}")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}; expected one of {SOLVERS}")
    _, h, w = features.shape
    graph = build_graph(features.reshape(features.shape[0], h * w).T, tau, eps, binary_graph)
    vector = second_eigenvector(graph, solver)
    foreground, seed = bipartition(vector)
    seed_cell = (seed // w, seed % w)
    component = seed_component(foreground.reshape(h, w), seed_cell)
    return Cut(vector.reshape(h, w), foreground.reshape(h, w), seed_cell, component, grid_box(component))
