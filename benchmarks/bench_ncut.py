"""TokenCut's eigen-solve: dense eigh against Lanczos (and WRC's torch.lobpcg), time and agreement.

    python -m benchmarks.bench_ncut [--tokens 196 784 3136 12544] [--dense-max 3136] [--repeat 3] [--device cpu]

Features: a square grid of N tokens with 384 channels, made of regions (a central elliptical object and
three background bands), each token = a shared direction + (background tokens) a background direction + its
region's random vector + noise, so the binary graph at tau = 0.2 has clusters joined by some edges (as DINO keys
give) instead of random noise, and the cut finds the object ("object IoU": its component against the ellipse).
For each N, the time of the whole cut (graph building, solve, bipartition, component, box; the fastest of
``--repeat`` calls) with each solver, and the agreement of its partition with the dense solver's (share of
tokens on the same side, same seed, same box). Dense eigh costs O(N^3) time and several N x N float64
arrays, so it runs up to ``--dense-max`` tokens only; beyond that the other solvers are compared with
Lanczos. lobpcg is WRC's call: torch.lobpcg(D - A, k=3, B=D, largest=False) on dense float32 tensors,
seeded, without a convergence check (its eigenvector then goes through the same bipartition). ``--device cuda``
runs lobpcg on the GPU; the graph, dense eigh and Lanczos are the protocols' CPU code (scipy) on any device.

Threads: one (OMP_NUM_THREADS and OPENBLAS_NUM_THREADS default to 1 here; set them to measure others). On the
shared 2-core machine of the committed results, multi-threaded OpenBLAS calls right after torch ops (whose OpenMP
workers keep spinning) made dense eigh 5-40x slower from thread contention alone, which would measure the
machine, not the solvers.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before numpy and torch load their thread pools
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import loglog_slope, publish  # noqa: E402
from evaluation.tokencut import ncut  # noqa: E402

CHANNELS, TAU, SHARED, BACKGROUND, NOISE = 384, 0.2, 0.6, 0.8, 1.0


def region_labels(side: int) -> np.ndarray:
    """(side, side) labels: 0 = an ellipse at the centre, 1..3 = three vertical bands of the background."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    labels = 1 + np.minimum((xx * 3).astype(int), 2)
    labels[((yy - 0.5) / 0.3) ** 2 + ((xx - 0.45) / 0.22) ** 2 <= 1] = 0
    return labels


def structured_features(tokens: int, seed: int = 0) -> torch.Tensor:
    """(384, side, side) features: shared direction + background direction (bands only) + region vector + noise."""
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise SystemExit(f"--tokens must be square numbers; got {tokens}")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(region_labels(side)).flatten()
    shared, background = torch.randn(CHANNELS, generator=gen), torch.randn(CHANNELS, generator=gen)
    centres = torch.randn(4, CHANNELS, generator=gen)
    feats = (SHARED * shared + BACKGROUND * (labels > 0).float()[:, None] * background + centres[labels]
             + NOISE * torch.randn(tokens, CHANNELS, generator=gen))
    return feats.T.reshape(CHANNELS, side, side).contiguous()


def lobpcg_cut(features: torch.Tensor) -> ncut.Cut:
    """WRC's solve: torch.lobpcg on the dense float32 generalised problem, then TokenCut's bipartition."""
    c, h, w = features.shape
    unit = torch.nn.functional.normalize(features.reshape(c, h * w).T, dim=1)
    a = torch.where(unit @ unit.T > TAU, 1.0, ncut.EPS)
    d = torch.diag(a.sum(dim=1))
    torch.manual_seed(0)
    _, vectors = torch.lobpcg(d - a, k=3, B=d, largest=False)
    vector = vectors[:, 1].double().cpu().numpy()  # lobpcg sorts the 3 smallest ascending; the second is the cut
    foreground, seed = ncut.bipartition(vector)
    cell = (seed // w, seed % w)
    component = ncut.seed_component(foreground.reshape(h, w), cell)
    return ncut.Cut(vector.reshape(h, w), foreground.reshape(h, w), cell, component, ncut.grid_box(component))


SOLVE = {
    "dense": lambda f: ncut.normalized_cut(f, TAU, solver="dense"),
    "lanczos": lambda f: ncut.normalized_cut(f, TAU, solver="lanczos"),
    "lobpcg": lobpcg_cut,
}


def fastest(fn, features: torch.Tensor, repeat: int) -> tuple[float, object]:
    times, cut = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        cut = fn(features)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3, cut


def object_iou(component: np.ndarray) -> float:
    truth = region_labels(component.shape[0]) == 0
    return float((component & truth).sum() / (component | truth).sum())


def agreement(cut: ncut.Cut, reference: ncut.Cut) -> dict[str, float | bool]:
    return {"same_side": float((cut.foreground == reference.foreground).mean()),
            "same_seed": cut.seed == reference.seed, "same_box": cut.box == reference.box}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[196, 784, 3136, 12544])
    parser.add_argument("--dense-max", type=int, default=3136, help="largest N for dense eigh (O(N^3))")
    parser.add_argument("--lobpcg-max", type=int, default=3136, help="largest N for lobpcg (dense N x N tensors)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where lobpcg runs (the graph and scipy solvers: the CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for tokens in args.tokens:
        features = structured_features(tokens).to(device)
        graph_ms, graph = fastest(lambda f: ncut.build_graph(f.reshape(CHANNELS, -1).T, TAU), features, args.repeat)
        row = {"tokens": tokens, "edge_density": graph.kept_edges / tokens**2, "graph_ms": graph_ms}
        cuts = {}
        for name in SOLVE:
            if (name == "dense" and tokens > args.dense_max) or (name == "lobpcg" and tokens > args.lobpcg_max):
                continue
            row[f"{name}_ms"], cuts[name] = fastest(SOLVE[name], features, args.repeat)
        reference = "dense" if "dense" in cuts else "lanczos"
        row["reference"] = reference
        for name, cut in cuts.items():
            if name != reference:
                row[f"{name}_vs_{reference}"] = agreement(cut, cuts[reference])
        row["object_iou"] = {name: object_iou(cut.component) for name, cut in cuts.items()}
        print(row, flush=True)
        rows.append(row)

    threads = {v: os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    publish(f"ncut_{device.type}", device, rows, table(rows, args.repeat, threads), channels=CHANNELS, tau=TAU,
            shared=SHARED, background=BACKGROUND, noise=NOISE, threads=threads)


def conclusion(rows: list[dict]) -> str:
    """The measured case for the protocols' default solver."""
    both = [r for r in rows if "dense_ms" in r and "lanczos_ms" in r]
    same = all(r["lanczos_vs_dense"]["same_side"] == 1.0 and r["lanczos_vs_dense"]["same_box"] for r in both)
    speedups = ", ".join(f"{r['dense_ms'] / r['lanczos_ms']:.1f}x at {r['tokens']}" for r in both)
    only = [r["tokens"] for r in rows if "lanczos_ms" in r and "dense_ms" not in r]
    return (f"Lanczos against dense: {'the same partition and box' if same else 'DIFFERENT partitions or boxes'} "
            f"at every N where both ran; dense time / Lanczos time: {speedups}"
            + (f"; N = {', '.join(map(str, only))} with Lanczos only" if only else "")
            + ". Default solver of object_discovery and salient: lanczos (from this measurement).")


def table(rows: list[dict], repeat: int, threads: dict[str, str]) -> list[str]:
    def ms(row: dict, name: str) -> str:
        return f"{row[name + '_ms']:.1f}" if name + "_ms" in row else "-"

    def agrees(row: dict, name: str) -> str:
        key = next((k for k in row if k.startswith(f"{name}_vs_")), None)
        if key is None:
            return "-"
        a = row[key]
        yes = {True: "yes", False: "no"}
        return f"{100 * a['same_side']:.2f} % / {yes[a['same_seed']]} / {yes[a['same_box']]}"

    lines = [f"TokenCut cut of N tokens x {CHANNELS} channels (structured features: 4 regions, shared direction "
             f"{SHARED}, background {BACKGROUND}, noise {NOISE}), tau {TAU}, binary graph, eps {ncut.EPS}; whole cut "
             f"(graph, solve, bipartition, component, box; 'graph alone': building the block graph only), fastest "
             f"of {repeat}. Agreement = share of tokens on the "
             "same side / same seed / same box as the reference (dense where it ran, else Lanczos); object IoU = the "
             "seed's component against the object region (dense / lanczos / lobpcg). Threads: "
             + ", ".join(f"{k}={v}" for k, v in threads.items()) + ".", "",
             "| tokens | edge density | graph alone ms | dense ms | lanczos ms | lobpcg ms | lanczos agrees "
             "| lobpcg agrees | object IoU |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for row in rows:
        ious = " / ".join(f"{row['object_iou'][n]:.3f}" if n in row["object_iou"] else "-" for n in SOLVE)
        lines.append(f"| {row['tokens']} | {row['edge_density']:.3f} | {ms(row, 'graph')} | {ms(row, 'dense')} | "
                     f"{ms(row, 'lanczos')} | "
                     f"{ms(row, 'lobpcg')} | {agrees(row, 'lanczos')} | {agrees(row, 'lobpcg')} | {ious} |")
    lines += ["", conclusion(rows), ""]
    for name in ("dense", "lanczos"):
        timed = [r for r in rows if f"{name}_ms" in r]
        if len(timed) > 1:
            slope = loglog_slope([r["tokens"] for r in timed], [r[f"{name}_ms"] for r in timed])
            lines.append(f"Growth of {name} time with N (log-log slope): {slope:.2f}.  ")
    return lines


if __name__ == "__main__":
    main()
