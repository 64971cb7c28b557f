"""WRC's upsampler time before and after issue 17 ("Speed on the CPU"), as ratios to LiFT measured in one process.

    python -m benchmarks.bench_wrc_speed [--device cpu] [--sizes 224 448] [--repeat 18] [--channels 384]

DINOv2 ViT-S/14 shapes (C = 384, patch 14, grid = image / 14 -> 2x), batch 1, random weights (they cost what
trained ones cost). Each round calls LiFT, the old WRC forward (benchmarks/wrc_speed_reference.py, frozen) and
the current one once each, interleaved, so that a loaded machine slows all three alike (each round in another of
their orders, 6 or 24 with --compile: a call after one that churned the caches and the allocator's memory runs
slower); the table gives medians and each one's ratio to LiFT's median, and checks that old and new outputs agree
(max |new - old|). A last row per size gives the time WRC spends in its convolutions alone against LiFT's whole
forward (profiled): the floor of any speed-up outside the convolution kernels as they run now.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import time

import torch

from benchmarks.common import publish, synchronize
from benchmarks.wrc_speed_reference import upsample_step as reference_step
from wrc.upsamplers.base import create_upsampler


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` through torch.compile (inductor) with frozen weights: constant-folded, convolution weights prepacked
    for oneDNN on the CPU; the same outputs up to float rounding (the table's last column says how close). Freezing is
    inductor's process-wide setting, read when the first call compiles: this benchmark's process compiles nothing
    else."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(model)


def bench(device: torch.device, sizes: list[int], repeat: int, channels: int, patch: int,
          compile_: bool = False) -> list[dict]:
    torch.manual_seed(0)
    wrc = create_upsampler("wrc", channels, patch).to(device).eval()
    lift = create_upsampler("lift", channels, patch).to(device).eval()
    # the old code's layout too: the current model keeps its conv weights channels-last
    wrc_before = copy.deepcopy(wrc).to(memory_format=torch.contiguous_format)
    wrc_compiled = compiled(copy.deepcopy(wrc)) if compile_ else None
    rows = []
    for size in sizes:
        grid = size // patch
        features = torch.randn(1, channels, grid, grid, device=device)
        image = torch.rand(1, 3, size, size, device=device)
        calls = {"lift": lambda f=features, i=image: lift(f, i),
                 "wrc_before": lambda f=features, i=image: reference_step(wrc_before, f, i),
                 "wrc_after": lambda f=features, i=image: wrc(f, i)}
        if wrc_compiled is not None:
            calls["wrc_compiled"] = lambda f=features, i=image: wrc_compiled(f, i)
        times: dict[str, list[float]] = {name: [] for name in calls}
        with torch.no_grad():  # not inference mode: inductor's freezing needs ordinary tensors
            before = calls["wrc_before"]()
            max_diff = (calls["wrc_after"]() - before).abs().max().item()
            compiled_diff = None if wrc_compiled is None else (calls["wrc_compiled"]() - before).abs().max().item()
            for _ in range(2):  # warm-up
                for call in calls.values():
                    call()
            # each round one of the calls' orders, all in turn (a call runs slower after one that churned the
            # caches and the allocator's memory: over a multiple of 6 rounds each model follows each other as often)
            orders = list(itertools.permutations(calls.items()))
            for round_ in range(repeat):
                for name, call in orders[round_ % len(orders)]:
                    synchronize(device)
                    start = time.perf_counter()
                    call()
                    synchronize(device)
                    times[name].append((time.perf_counter() - start) * 1e3)
            # CPU only: on CUDA the profiler's CPU times are launch times, not kernel times
            floor = convolution_floor(calls["wrc_after"], calls["lift"], max(3, repeat // 3)) \
                if device.type == "cpu" else None
        lift_ms = statistics.median(times["lift"])
        for name, ts in times.items():
            ms = statistics.median(ts)
            diff = compiled_diff if name == "wrc_compiled" else max_diff
            rows.append({"model": name, "image_size": size, "grid": [grid, grid], "median_ms": ms,
                         "vs_lift": ms / lift_ms, "repeat": repeat, "max_abs_diff_vs_before": diff})
        if floor is not None:
            rows.append({"model": "wrc_after, convolutions only", "image_size": size, "grid": [grid, grid],
                         "median_ms": floor["conv_ms"], "vs_lift": floor["conv_ms"] / floor["lift_ms"],
                         "repeat": floor["rounds"], "max_abs_diff_vs_before": None})
    return rows


# PyTorch's convolution kernels, oneDNN's fused ones, and torch_wrc's (Winograd 3x3; two 1x1 convolutions per pixel)
CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::slow_conv_dilated2d",
                "aten::_nnpack_spatial_convolution", "mkldnn::_convolution_pointwise",
                "mkldnn::_convolution_pointwise_", "wrc::winograd_conv3x3", "wrc::pixel_mlp", "wrc::pixel_mlp_into",
                "wrc::pixel_mlp_moments")


def convolution_floor(wrc_call, lift_call, rounds: int) -> dict[str, float]:
    """The time WRC spends inside convolution kernels per call, and LiFT's whole call, from two profiler passes (WRC's
    calls, then LiFT's): a lower bound on WRC's time for any change that keeps its convolutions (and its outputs)."""
    from torch.profiler import ProfilerActivity, profile

    totals = {}
    for name, call in (("wrc", wrc_call), ("lift", lift_call)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(rounds):
                call()
        events = prof.key_averages()
        # total, not self time: the Winograd kernel's matrix products are child ops (none of these ops nests another)
        totals[name] = (sum(e.cpu_time_total for e in events if e.key in CONVOLUTIONS) / rounds / 1e3,
                        sum(e.self_cpu_time_total for e in events) / rounds / 1e3)
    return {"conv_ms": totals["wrc"][0], "lift_ms": totals["lift"][1], "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 448])
    parser.add_argument("--repeat", type=int, default=18,
                        help="rounds (a multiple of 6, of 24 with --compile: every order as often)")
    parser.add_argument("--channels", type=int, default=384, help="feature width (384: DINOv2 ViT-S/14)")
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--compile", action="store_true",
                        help="add a row for the current forward through torch.compile with frozen weights (minutes of "
                             "compilation per size on a CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = bench(device, args.sizes, args.repeat, args.channels, args.patch, args.compile)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    models = "LiFT, WRC before, WRC after" + (", WRC after compiled" if args.compile else "")
    lines = [f"C={args.channels}, patch {args.patch}, batch 1, 2x; {torch.get_num_threads()} threads, load average "
             f"{load:.1f} on {os.cpu_count()} cores at the end. Medians of {args.repeat} interleaved rounds "
             f"({models}; their orders in turn), ratios to LiFT's median in the same run: on a shared machine "
             "absolute ms are not comparable across runs, the ratios are the result. \"convolutions only\": the time "
             "WRC spends inside convolution kernels, over LiFT's whole forward, from a profiler pass over each: what "
             "remains if everything around the convolution kernels took no time.", "",
             "| model | image | grid | median ms | x LiFT | max abs diff after vs before |",
             "| --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        diff = "-" if r["max_abs_diff_vs_before"] is None else f"{r['max_abs_diff_vs_before']:.1e}"
        lines.append(f"| {r['model']} | {r['image_size']} | {r['grid'][0]}x{r['grid'][1]} | {r['median_ms']:.1f} | "
                     f"{r['vs_lift']:.2f} | {diff} |")
    publish(f"wrc_speed_{device.type}", device, rows, lines, channels=args.channels, patch=args.patch,
            order="each round another order of the calls, all in turn")


if __name__ == "__main__":
    main()
