"""Time and peak memory of today's attention upsamplers at 224, 448 and 896 output, batch 1 and 8, as ratios to
bilinear and to the backbone measured in the same run.

    python -m benchmarks.bench_modern_peers [--device cuda] [--sizes 224 448 896] [--batch 1 8]
        [--methods jafar anyup naf uplift loftup upsample_anything] [--max-seconds 30] [--max-gib 8]

Setting: DINOv2 ViT-S/14 (random weights cost what pretrained ones do), the image at the output size (16, 32 and 64
tokens a side), each method at its defaults (untrained: same cost), inference without gradients, the output at the
image's pixel grid. Time: median of timed calls after one warm-up (a single call once one takes over 5 s). Memory:
the peak above the inputs (tokens and image) of one call; CUDA: max allocated; CPU: peak RSS in a fresh process.
"bilinear" and "backbone" (the ViT's forward on the image) are measured at every cell; their ratios say what a
method costs beside what every user already pays.

A cell whose time per call or whose peak memory is estimated above ``--max-seconds`` / ``--max-gib`` is not run and
its estimate is reported instead (batch 8 = 8 x batch 1; a larger size from the method's growth between its two
largest measured sizes; bilinear and the backbone are skipped for memory only): on two CPU cores the
global-attention methods take minutes and tens of GB at 896 px and batch 8, so the CPU table has such cells; the GPU
suite runs this benchmark with ``--max-gib 100``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass

import torch

from benchmarks.common import cuda_peak_mib, publish, rss_peak_mib, subprocess_peak_mib, time_call
from wrc.arguments import positive_int

METHODS = ("jafar", "anyup", "naf", "uplift", "loftup", "upsample_anything")
BASELINES = ("backbone", "bilinear")
LONG_CALL_S = 5.0


@dataclass
class Cell:
    """One (method, batch, size): measured (``ms``, ``mib``) or only estimated (``estimated``)."""

    method: str
    batch: int
    size: int
    ms: float
    mib: float
    estimated: bool = False


def make_backbone(backbone_name: str, device: torch.device):
    """The backbone with the same seeded random weights in every process."""
    from wrc import FrozenBackbone

    torch.manual_seed(0)
    return FrozenBackbone(backbone_name, "random").to(device).eval()


def make_inputs(backbone, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, tokens): the same seeded image in every process, and the backbone's tokens of it."""
    device = next(backbone.parameters()).device
    image = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size)).to(device)
    with torch.no_grad():
        return image, backbone(image)


def make_call(method: str, backbone, image: torch.Tensor, tokens: torch.Tensor):
    """The timed call: the backbone's forward, or ``method`` from the tokens to the image's pixel grid."""
    if method == "backbone":
        return lambda: backbone(image)
    from wrc.extractor import build_extractor

    extractor = build_extractor(backbone, method, device=image.device)
    size = tuple(image.shape[-2:])
    return lambda: extractor.upsample(tokens, image, size)


def memory_worker(spec: list) -> float:
    """CPU peak RSS of one call above its inputs, in this (fresh) process."""
    backbone_name, method, batch, size = spec
    backbone = make_backbone(backbone_name, torch.device("cpu"))
    call = make_call(method, backbone, *make_inputs(backbone, batch, size))
    with torch.no_grad():
        return rss_peak_mib(call)


def measure(method: str, backbone, image: torch.Tensor, tokens: torch.Tensor, args: argparse.Namespace) -> Cell:
    device = torch.device(args.device)
    batch, size = image.shape[0], image.shape[-1]
    call = make_call(method, backbone, image, tokens)
    first = time_call(call, device, warmup=0, repeat=1)["median_ms"]
    ms = first if first > LONG_CALL_S * 1e3 else time_call(call, device, warmup=0, repeat=args.repeat)["median_ms"]
    if device.type == "cuda" or args.memory_in_process:
        with torch.no_grad():
            mib = cuda_peak_mib(call) if device.type == "cuda" else rss_peak_mib(call)
    else:
        mib = subprocess_peak_mib("benchmarks.bench_modern_peers", [args.backbone, method, batch, size])
    return Cell(method, batch, size, ms, mib)


def estimate(method: str, batch: int, size: int, cells: dict[tuple, Cell]) -> Cell | None:
    """Time and memory of a cell not yet run, from the method's measured cells: batch b = b x batch 1 at that size;
    a larger size by the growth (log-log slope in the side) between the two largest sizes measured at batch 1 (side
    squared, i.e. pixels, when only one is). None when nothing is measured yet."""
    if batch != 1:
        single = cells.get((method, 1, size)) or estimate(method, 1, size, cells)
        return single and Cell(method, batch, size, single.ms * batch, single.mib * batch, estimated=True)
    sizes = sorted(s for (m, b, s), c in cells.items() if m == method and b == 1 and not c.estimated and s < size)
    if not sizes:
        return None
    big = cells[(method, 1, sizes[-1])]
    if len(sizes) >= 2:
        small = cells[(method, 1, sizes[-2])]
        ratio = math.log(sizes[-1] / sizes[-2])
        slope_ms = math.log(big.ms / small.ms) / ratio
        slope_mib = math.log(max(big.mib, 1.0) / max(small.mib, 1.0)) / ratio
    else:
        slope_ms = slope_mib = 2.0
    grow = size / sizes[-1]
    return Cell(method, 1, size, big.ms * grow ** max(slope_ms, 1.0), big.mib * grow ** max(slope_mib, 1.0),
                estimated=True)


def bench(args: argparse.Namespace) -> list[Cell]:
    cells: dict[tuple, Cell] = {}
    backbone = make_backbone(args.backbone, torch.device(args.device))
    for batch in sorted(args.batch):
        for size in sorted(args.sizes):
            image, tokens = make_inputs(backbone, batch, size)  # once per cell row: every method reads the same
            for method in (*BASELINES, *args.methods):
                guess = estimate(method, batch, size, cells)
                over_time = method not in BASELINES and guess is not None and guess.ms > args.max_seconds * 1e3
                if guess is not None and (over_time or guess.mib > args.max_gib * 1024):
                    cells[(method, batch, size)] = guess
                    print(f"{method:18s} batch {batch} {size:4d} px: not run (estimated {guess.ms / 1e3:.0f} s, "
                          f"{guess.mib / 1024:.1f} GiB)", flush=True)
                    continue
                cell = cells[(method, batch, size)] = measure(method, backbone, image, tokens, args)
                print(f"{method:18s} batch {batch} {size:4d} px: {cell.ms:10.1f} ms {cell.mib:9.1f} MiB", flush=True)
    return list(cells.values())


def table(cells: list[Cell], args: argparse.Namespace) -> list[str]:
    by_key = {(c.method, c.batch, c.size): c for c in cells}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"{args.backbone} (random weights), the image at the output size, inference; {torch.get_num_threads()} "
             f"thread(s), load average {load:.1f} on {os.cpu_count()} cores at the end. ms: median per call; "
             "MiB: peak above the inputs. Ratios to bilinear and to the backbone's forward at the same batch and size. "
             f"~: estimated, not run (over --max-seconds {args.max_seconds:g} or --max-gib {args.max_gib:g}).", "",
             "| method | batch | output | ms | x bilinear | x backbone | MiB | x bilinear | x backbone |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method in (*BASELINES, *args.methods):
        for batch in sorted(args.batch):
            for size in sorted(args.sizes):
                cell = by_key[(method, batch, size)]
                base, bb = by_key[("bilinear", batch, size)], by_key[("backbone", batch, size)]
                mark = "~" if cell.estimated else ""
                lines.append(f"| {method} | {batch} | {size} | {mark}{cell.ms:.1f} | {mark}{cell.ms / base.ms:.1f} | "
                             f"{mark}{cell.ms / bb.ms:.2f} | {mark}{cell.mib:.0f} | "
                             f"{mark}{cell.mib / max(base.mib, 1.0):.1f} | {mark}{cell.mib / max(bb.mib, 1.0):.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", type=positive_int, default=[224, 448, 896])
    parser.add_argument("--batch", nargs="+", type=positive_int, default=[1, 8])
    parser.add_argument("--repeat", type=positive_int, default=3, help="timed calls per cell (one above 5 s a call)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cells estimated slower per call: not run")
    parser.add_argument("--max-gib", type=float, default=8.0, help="cells estimated above this peak: not run")
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2", help="timm ViT name (random weights)")
    parser.add_argument("--memory-in-process", action="store_true",
                        help="CPU: measure peak RSS in this process (less exact; for smoke runs)")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(memory_worker(json.loads(args.memory_worker)))
        return
    from wrc import list_upsamplers

    unknown = sorted(set(args.methods) - set(list_upsamplers()))
    if unknown:
        parser.error(f"--methods: unknown upsampler(s) {unknown}; registered: {', '.join(list_upsamplers())}")
    device = torch.device(args.device)
    cells = bench(args)
    publish(f"modern_peers_{device.type}", device, [vars(c) for c in cells], table(cells, args),
            backbone=args.backbone, max_seconds=args.max_seconds, max_gib=args.max_gib)


if __name__ == "__main__":
    main()
