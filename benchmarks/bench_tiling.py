"""Tiled inference (wrc.tiling): peak memory and time against the guidance image's size, tiled vs untiled.

    python -m benchmarks.bench_tiling [--sizes 256 512 1024 2048 4096] [--models bilinear wrc] [--channels 384]
        [--factor 4] [--tile 512] [--untiled-max 2048] [--compare-max 1024]

Inputs: random tokens of a patch-16 backbone with ``--channels`` channels (384: ViT-S/16) on a size/16 grid, and a
random size x size guidance image; the output is ``--factor`` times the token grid (4: 1024^2 at 4096 px; the
pixel-level 4096^2 x 384 output alone would be 24 GiB of fp32, above this machine's memory). Untrained weights
cost the same as trained ones. Untiled runs stop at ``--untiled-max`` px (larger ones would not fit beside the
other jobs on the machine); the tiled run uses the default halo and blend of the method (wrc.tiling).

Memory: every (method, size, mode) runs in a fresh process, single-threaded, with glibc's mmap threshold fixed at
64 KiB, so every tensor buffer is its own mapping and is returned to the OS when freed; the peak resident set
(VmHWM, reset after a warm-up call on a small input) minus the resident set before the call is the call's peak
allocation, output included. (tracemalloc does not see torch's allocator, and a peak RSS without the fixed
threshold counts heap pages recycled from earlier calls.) "working" is that peak less the output tensor: what
tiling bounds. Time: the same call (one call at the large sizes, the best of three below 1024 px).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import current_rss_mib, loglog_slope, peak_rss_mib, publish, reset_peak_rss
from wrc import create_upsampler
from wrc.tiling import plan_tiles, tiled_upsample

PATCH = 16


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process: peak MiB above the inputs, seconds, and the tiling plan."""
    torch.manual_seed(0)
    up = create_upsampler(spec["model"], spec["channels"], PATCH).eval()
    tiled = spec["mode"] == "tiled"

    def call(size: int) -> torch.Tensor:
        grid = size // PATCH
        feats, image = torch.randn(1, spec["channels"], grid, grid), torch.rand(1, 3, size, size)
        out = (grid * spec["factor"],) * 2
        with torch.no_grad():
            return tiled_upsample(up, feats, image, out, tile=spec["tile"]) if tiled else up(feats, image, out)

    call(256)  # warm-up: lazy initialisation, thread pools, the extension
    grid = spec["size"] // PATCH
    feats, image = torch.randn(1, spec["channels"], grid, grid), torch.rand(1, 3, spec["size"], spec["size"])
    size = (grid * spec["factor"],) * 2
    base = current_rss_mib()
    reset_peak_rss()
    times = []
    for _ in range(3 if spec["size"] < 1024 else 1):
        start = time.perf_counter()
        with torch.no_grad():
            out = tiled_upsample(up, feats, image, size, tile=spec["tile"]) if tiled else up(feats, image, size)
        times.append(time.perf_counter() - start)
        peak = peak_rss_mib() - base
        output_mib = out.numel() * out.element_size() / 2**20
        del out
    result = {"peak_mib": peak, "output_mib": output_mib, "working_mib": peak - output_mib, "seconds": min(times)}
    if tiled:
        plan = plan_tiles(up, (grid, grid), (spec["size"],) * 2, size, tile=spec["tile"])
        result.update(tiles=plan.num_tiles, halo=plan.halo, blend=plan.blend, exact=plan.exact)
        if spec["size"] <= spec["compare_max"]:
            with torch.no_grad():
                ref, out = up(feats, image, size), tiled_upsample(up, feats, image, size, tile=spec["tile"])
            result["rel_l2_vs_untiled"] = float((out - ref).norm() / ref.norm())
            result["max_abs_vs_untiled"] = float((out - ref).abs().max())
    return result


def measure(spec: dict) -> dict:
    """``worker(spec)`` in a fresh process (see the module docstring for why)."""
    repo_root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_tiling", "--worker", json.dumps(spec)],
                          cwd=repo_root, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"})
    if proc.returncode:
        raise RuntimeError(f"worker {spec} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(models: list[str], sizes: list[int], channels: int, factor: int, tile: int, untiled_max: int,
          compare_max: int) -> list[dict]:
    rows = []
    for model in models:
        for size in sizes:
            for mode in ("untiled", "tiled"):
                if mode == "untiled" and size > untiled_max:
                    continue
                spec = {"model": model, "size": size, "mode": mode, "channels": channels, "factor": factor,
                        "tile": tile, "compare_max": compare_max}
                row = {**spec, **measure(spec)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def summary(rows: list[dict], models: list[str]) -> dict[str, dict[str, float]]:
    """Per method: the log-log slope of tiled time against pixels, and the spread of tiled working memory, over
    the sizes with more than one tile (where the tile, not the image, sets the memory)."""
    out = {}
    for model in models:
        tiled = [r for r in rows if r["model"] == model and r["mode"] == "tiled" and r["tiles"] > 1]
        if len(tiled) >= 2:
            working = [r["working_mib"] for r in tiled]
            out[model] = {"time_vs_pixels_slope": loglog_slope([r["size"] ** 2 for r in tiled],
                                                               [r["seconds"] for r in tiled]),
                          "working_mib_min": min(working), "working_mib_max": max(working)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["bilinear", "wrc"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--untiled-max", type=int, default=2048)
    parser.add_argument("--compare-max", type=int, default=1024)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if any(size % PATCH for size in args.sizes) or args.tile % PATCH:
        raise SystemExit(f"--sizes and --tile must be multiples of the patch size {PATCH}")
    rows = bench(args.models, args.sizes, args.channels, args.factor, args.tile, args.untiled_max, args.compare_max)
    slopes = summary(rows, args.models)
    lines = [f"Patch-16 tokens, C = {args.channels}, output {args.factor}x the token grid, tile {args.tile} px, "
             "default halo/blend; CPU, one thread per measurement, each in a fresh process. Peak = peak RSS above "
             "the inputs (output included); working = peak - output.", "",
             "| upsampler | image px | grid | output | mode | tiles | halo | peak MiB | output MiB | working MiB | "
             "seconds | rel. L2 vs untiled |", "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | "
             "---: | ---: |"]
    for r in rows:
        grid = r["size"] // PATCH
        diff = f"{r['rel_l2_vs_untiled']:.1e}" if "rel_l2_vs_untiled" in r else ""
        lines.append(f"| {r['model']} | {r['size']} | {grid} | {grid * r['factor']} | {r['mode']} | "
                     f"{r.get('tiles', 1)} | {r.get('halo', '')} | {r['peak_mib']:.0f} | {r['output_mib']:.0f} | "
                     f"{r['working_mib']:.0f} | {r['seconds']:.2f} | {diff} |")
    lines += ["", "| upsampler | tiled time ~ pixels^slope (sizes with > 1 tile) | tiled working MiB (min - max) |",
              "| --- | ---: | ---: |"]
    for model, s in slopes.items():
        lines.append(f"| {model} | {s['time_vs_pixels_slope']:.2f} | {s['working_mib_min']:.0f} - "
                     f"{s['working_mib_max']:.0f} |")
    publish("tiling_cpu", torch.device("cpu"), rows, lines, summary=slopes,
            settings={k: v for k, v in vars(args).items() if k != "worker"})


if __name__ == "__main__":
    main()
