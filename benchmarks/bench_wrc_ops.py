"""The WRC solve: fused torch_wrc kernels against the pure-PyTorch reference, iterations, and scaling.

    python -m benchmarks.bench_wrc_ops [--device cuda] [--quick | --tiny]

1. extension vs reference (same run): the k == s block solve (WRC) and the scalar-weight closed form
   (Converse2D) at the WRC layer's internal width (208 channels for ViT-S/14) for 448 and 896 inputs
   (32x32 and 64x64 token grids), batch 1 and 8; forward and forward+backward time, and peak extra
   memory (CUDA: max allocated; CPU: peak RSS of a fresh subprocess above its inputs).
2. iterations: spatially weighted k = 4 solve, relative error to the exact minimiser and time for
   PCG iterations 0..N (0 = the closed-form one-step approximation).
3. scaling: time and memory of the solve against output size (224 to 1792 input pixels) and channels,
   with the fitted growth exponent.
4. the whole WRC upsampler forward at 448, batch 1.

--tiny (the CI smoke run of benchmarks.gpu_suite): a few small shapes, CPU memory measured in this process;
seconds on a CPU, numbers without meaning.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

from benchmarks.common import (
    cuda_held_mib,
    cuda_peak_mib,
    loglog_slope,
    publish,
    require_extension,
    rss_held_mib,
    rss_peak_mib,
    subprocess_peak_mib,
    time_call,
)

WIDTH = 208  # fused width of the WRC network for C = 384 (wrc.layers.blocks.fused_width)


def block_inputs(batch: int, channels: int, grid: int, device: torch.device, requires_grad: bool = False):
    g = torch.Generator().manual_seed(0)
    shapes = [(batch, channels, grid, grid), (batch, channels, 2 * grid, 2 * grid), (channels, 2, 2),
              (batch, channels, grid, grid), (batch, channels, 2 * grid, 2 * grid)]
    tensors = [torch.randn(s, generator=g) for s in shapes]
    tensors[2] = tensors[2].abs() + 0.1
    tensors[3] = tensors[3].abs()
    tensors[4] = tensors[4].abs() + 0.1
    return [t.to(device).requires_grad_(requires_grad) for t in tensors]


def closed_form_inputs(batch: int, channels: int, grid: int, device: torch.device, requires_grad: bool = False):
    y, z, kernel, _, _ = block_inputs(batch, channels, grid, device)
    g = torch.Generator().manual_seed(1)
    lam, alpha = torch.rand(batch, channels, generator=g), torch.rand(batch, channels, generator=g) + 0.1
    return [t.to(device).detach().requires_grad_(requires_grad) for t in (y, z, kernel, lam, alpha)]


def solver(impl: str):
    """The k == s weighted solve: the fused op, or the pure-PyTorch reference."""
    from wrc.ops.reverse_conv import block_solve_reference

    return torch.ops.wrc.block_solve if impl == "extension" else block_solve_reference


def closed_form_solver(impl: str):
    """Converse2D's scalar-weight closed form (k = 2, padding 2): fused kernels, or pure PyTorch throughout."""
    from wrc.ops import reverse_conv as rc

    def solve(y, z, kernel, lam, alpha):
        with contextlib.nullcontext() if impl == "extension" else rc.reference_only():
            return rc.reverse_conv(y, z, kernel, 2, lam, alpha, padding=2)

    return solve


OPS = {  # name: (inputs, solver by implementation)
    "block_solve": (block_inputs, solver),
    "closed_form": (closed_form_inputs, closed_form_solver),
}


def call(op: str, impl: str, args: list[torch.Tensor], backward: bool) -> None:
    """One solve (and its backward) on prepared inputs."""
    out = OPS[op][1](impl)(*args)
    if backward:
        out.backward(torch.ones_like(out))


def timed(op: str, impl: str, batch: int, channels: int, grid: int, device: torch.device, backward: bool,
          repeat: int) -> float:
    """Median ms of one solve (+ backward); the inputs are made once, outside the timed calls."""
    args = OPS[op][0](batch, channels, grid, device, requires_grad=backward)
    fn = lambda: call(op, impl, args, backward)  # noqa: E731
    return time_call(fn, device, warmup=2, repeat=repeat, grad=backward)["median_ms"]


def cpu_memory_mib(spec: list, in_process: bool) -> float:
    """A CPU memory measurement (``measure_cpu_memory``), in a fresh process unless ``in_process``."""
    return measure_cpu_memory(spec) if in_process else subprocess_peak_mib("benchmarks.bench_wrc_ops", spec)


def peak_memory_mib(op: str, impl: str, batch: int, channels: int, grid: int, device: torch.device,
                    backward: bool, in_process: bool = False) -> float:
    """Extra memory at the peak of one call above its inputs."""
    if device.type == "cuda":
        args = OPS[op][0](batch, channels, grid, device, requires_grad=backward)
        return cuda_peak_mib(lambda: call(op, impl, args, backward))
    return cpu_memory_mib(["peak", op, impl, batch, channels, grid, backward], in_process)


def held_memory_mib(op: str, impl: str, batch: int, channels: int, grid: int, device: torch.device,
                    in_process: bool = False) -> float:
    """Memory a forward with gradients keeps for its backward beyond inputs and output: what a training step holds
    per solve from the forward pass to the backward pass."""
    if device.type == "cuda":
        args = OPS[op][0](batch, channels, grid, device, requires_grad=True)
        return cuda_held_mib(lambda: OPS[op][1](impl)(*args))
    return cpu_memory_mib(["held", op, impl, batch, channels, grid, True], in_process)


def floor_mib(op: str, batch: int, channels: int, grid: int, backward: bool) -> float:
    """Memory any implementation must hold at the peak: the output, and with backward also the upstream
    gradient and one gradient per input (4-byte floats). A ratio to the reference below floor / reference
    is out of reach for every implementation."""
    inputs = OPS[op][0](batch, channels, grid, torch.device("cpu"))
    output = inputs[1].numel()  # x has the prior's shape
    total = output + (output + sum(t.numel() for t in inputs) if backward else 0)
    return total * 4 / 2**20


def measure_cpu_memory(spec: list) -> float:
    """RSS above the inputs: the peak of one call, or what a forward holds for its backward."""
    measure, op, impl, batch, channels, grid, backward = spec
    import torch_wrc  # noqa: F401  (load the ops before measuring)

    args = OPS[op][0](batch, channels, grid, torch.device("cpu"), requires_grad=backward)
    if measure == "held":
        return rss_held_mib(lambda: OPS[op][1](impl)(*args))
    return rss_peak_mib(lambda: call(op, impl, args, backward))


def memory_worker(spec: str) -> None:
    print(measure_cpu_memory(json.loads(spec)))


def bench_extension(op: str, device: torch.device, grids: list[int], batches: list[int], repeat: int,
                    channels: int = WIDTH, in_process: bool = False) -> list[dict]:
    rows = []
    for batch in batches:
        for grid in grids:
            row = {"op": op, "batch": batch, "channels": channels, "grid": grid, "input_px": grid * 14}
            for impl in ("reference", "extension"):
                for mode, backward in (("forward", False), ("forward_backward", True)):
                    row[f"{impl}_{mode}_ms"] = timed(op, impl, batch, channels, grid, device, backward, repeat)
                    row[f"{impl}_{mode}_peak_mib"] = peak_memory_mib(op, impl, batch, channels, grid, device,
                                                                     backward, in_process)
                    row[f"floor_{mode}_mib"] = floor_mib(op, batch, channels, grid, backward)
                row[f"{impl}_held_mib"] = held_memory_mib(op, impl, batch, channels, grid, device, in_process)
            for mode in ("forward", "forward_backward"):
                row[f"speedup_{mode}"] = row[f"reference_{mode}_ms"] / row[f"extension_{mode}_ms"]
                row[f"memory_ratio_{mode}"] = (row[f"extension_{mode}_peak_mib"]
                                               / max(row[f"reference_{mode}_peak_mib"], 1e-9))
                row[f"best_possible_ratio_{mode}"] = (row[f"floor_{mode}_mib"]
                                                      / max(row[f"reference_{mode}_peak_mib"], 1e-9))
            row["held_ratio"] = max(row["extension_held_mib"], 0.0) / max(row["reference_held_mib"], 1e-9)
            rows.append(row)
    return rows


def bench_iterations(device: torch.device, max_iterations: int, c: int = 64, h: int = 32) -> list[dict]:
    from wrc.ops.reverse_conv import reference_only, weighted_reverse_conv

    g = torch.Generator().manual_seed(0)
    b = 1
    y, z = torch.randn(b, c, h, h, generator=g), torch.randn(b, c, 2 * h, 2 * h, generator=g)
    kernel = torch.softmax(torch.randn(c, 16, generator=g), dim=-1).view(c, 4, 4)
    w_low = torch.rand(b, c, h, h, generator=g) * 4
    w_high = 0.05 + torch.rand(b, c, 2 * h, 2 * h, generator=g) * 4
    args = [t.to(device) for t in (y, z, kernel, w_low, w_high)]
    exact = weighted_reverse_conv(*args[:3], 2, *args[3:], iterations=500, tol=1e-7)
    rows = []
    for iterations in range(max_iterations + 1):
        def fn(iterations=iterations):
            return weighted_reverse_conv(*args[:3], 2, *args[3:], iterations=iterations, tol=1e-30)

        out = fn()
        error = ((out - exact).norm() / exact.norm()).item()
        fused_ms = time_call(fn, device, warmup=1, repeat=5)["median_ms"]
        with reference_only():
            reference_ms = time_call(fn, device, warmup=1, repeat=5)["median_ms"]
        rows.append({"iterations": iterations, "relative_error": error, "ms": fused_ms, "reference_ms": reference_ms})
    return rows


def bench_scaling(device: torch.device, impl: str, sizes: list[int], channels: list[int], width: int = WIDTH,
                  grid_for_channels: int = 32, in_process: bool = False) -> dict:
    by_size = []
    for px in sizes:
        grid = px // 14
        ms = timed("block_solve", impl, 1, width, grid, device, False, repeat=5)
        by_size.append({"input_px": px, "output_cells": (2 * grid) ** 2, "ms": ms,
                        "peak_mib": peak_memory_mib("block_solve", impl, 1, width, grid, device, False, in_process)})
    by_channels = []
    for c in channels:
        ms = timed("block_solve", impl, 1, c, grid_for_channels, device, False, repeat=5)
        by_channels.append({"channels": c, "ms": ms, "peak_mib": peak_memory_mib(
            "block_solve", impl, 1, c, grid_for_channels, device, False, in_process)})

    return {"impl": impl, "by_size": by_size, "by_channels": by_channels,
            "time_exponent_vs_output_cells": loglog_slope([r["output_cells"] for r in by_size],
                                                          [r["ms"] for r in by_size]),
            "memory_exponent_vs_output_cells": loglog_slope([r["output_cells"] for r in by_size],
                                                        [max(r["peak_mib"], 1e-3) for r in by_size]),
            "time_exponent_vs_channels": loglog_slope([r["channels"] for r in by_channels],
                                                  [r["ms"] for r in by_channels])}


def bench_upsampler(device: torch.device, input_px: int = 448, repeat: int = 20) -> dict:
    from wrc import create_upsampler

    up = create_upsampler("wrc", 384, 14).to(device).eval()
    grid = input_px // 14
    feats, image = torch.randn(1, 384, grid, grid, device=device), torch.rand(1, 3, input_px, input_px, device=device)
    return {"model": "wrc", "input_px": input_px, "batch": 1,
            "forward_ms": time_call(lambda: up(feats, image), device, warmup=3, repeat=repeat)["median_ms"]}


def markdown(results: dict) -> str:
    channels = results["extension_vs_reference"][0]["channels"]
    lines = [f"## 1. Fused kernels vs the pure-PyTorch reference, {channels} channels "
             f"({WIDTH}: the WRC layer's width for ViT-S)", "",
             "block_solve: the weighted k = s = 2 solve (WRC's default). closed_form: Converse2D's scalar-weight "
             "solve (k = 2, 2 cells of padding), whose LR-spectrum step is fused.", "",
             "Peak MiB: extra memory at the peak of one call above its inputs, after one warm-up call (CPU: peak RSS "
             "of a fresh process; CUDA: max allocated). Floor MiB: what every implementation must hold at the peak "
             "(the output; with backward also the upstream gradient and one gradient per input), so floor / "
             "reference bounds the memory ratio any implementation can reach.", "",
             "| op | batch | input | grid | mode | reference ms | extension ms | speed-up | reference peak MiB | "
             "extension peak MiB | floor MiB | memory ratio | best possible ratio |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["extension_vs_reference"]:
        for mode in ("forward", "forward_backward"):
            lines.append(f"| {r['op']} | {r['batch']} | {r['input_px']} | {r['grid']} | {mode} | "
                         f"{r[f'reference_{mode}_ms']:.2f} | {r[f'extension_{mode}_ms']:.2f} | "
                         f"{r[f'speedup_{mode}']:.2f}x | "
                         f"{r[f'reference_{mode}_peak_mib']:.1f} | {r[f'extension_{mode}_peak_mib']:.1f} | "
                         f"{r[f'floor_{mode}_mib']:.1f} | {r[f'memory_ratio_{mode}']:.2f} | "
                         f"{r[f'best_possible_ratio_{mode}']:.2f} |")
    lines += ["", "Held for backward: memory a forward with gradients keeps until the backward pass beyond its inputs "
              "and output (autograd's saved intermediates), the cost a training step pays per solve for the whole "
              "forward-to-backward interval. The fused ops save only their inputs and recompute in the backward.", "",
              "| op | batch | input | reference held MiB | extension held MiB | ratio |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['op']} | {r['batch']} | {r['input_px']} | {r['reference_held_mib']:.1f} | "
              f"{r['extension_held_mib']:.1f} | {r['held_ratio']:.2f} |" for r in results["extension_vs_reference"]]
    it = results["iterations_setting"]
    lines += ["", f"## 2. Spatial weights, k = 4: PCG iterations vs accuracy ({it['channels']} channels, "
              f"{it['grid']}x{it['grid']} -> {2 * it['grid']}x{2 * it['grid']})", "",
              "| iterations | relative error to the exact minimiser | ms (extension) | ms (reference) |",
              "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['iterations']} | {r['relative_error']:.2e} | {r['ms']:.2f} | {r['reference_ms']:.2f} |"
              for r in results["iterations"]]
    sc = results["scaling"]
    lines += ["", f"## 3. Scaling of the {sc['impl']} block solve (batch 1)", "",
              "| input px | output cells | ms | peak MiB |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['input_px']} | {r['output_cells']} | {r['ms']:.2f} | {r['peak_mib']:.1f} |" for r in sc["by_size"]]
    lines += ["", "| channels (32x32 grid) | ms | peak MiB |", "| ---: | ---: | ---: |"]
    lines += [f"| {r['channels']} | {r['ms']:.2f} | {r['peak_mib']:.1f} |" for r in sc["by_channels"]]
    lines += ["", f"Growth exponents: time ~ cells^{sc['time_exponent_vs_output_cells']:.2f}, "
              f"memory ~ cells^{sc['memory_exponent_vs_output_cells']:.2f}, "
              f"time ~ channels^{sc['time_exponent_vs_channels']:.2f}.",
              "", f"## 4. Whole WRC upsampler (ViT-S/14, 384 channels), forward at {results['upsampler']['input_px']}, "
              "batch 1", "",
              f"{results['upsampler']['forward_ms']:.2f} ms"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--tiny", action="store_true", help="CI smoke sizes: seconds on a CPU, numbers without meaning")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return memory_worker(args.memory_worker)
    require_extension()
    device = torch.device(args.device)
    if args.tiny:
        results = {
            "extension_vs_reference": bench_extension("block_solve", device, [4], [1], 1, channels=8, in_process=True)
            + bench_extension("closed_form", device, [4], [1], 1, channels=8, in_process=True),
            "iterations": bench_iterations(device, 1, c=4, h=4), "iterations_setting": {"channels": 4, "grid": 4},
            "scaling": bench_scaling(device, "extension", [56, 112], [4, 8], width=8, grid_for_channels=4,
                                     in_process=True),
            "upsampler": bench_upsampler(device, input_px=56, repeat=1),
        }
    else:
        repeat = 5 if args.quick else 10
        sizes, channels = ([224, 448, 896], [64, 208, 416]) if args.quick else ([224, 448, 896, 1792],
                                                                                  [64, 208, 416, 768])
        results = {
            "extension_vs_reference": bench_extension("block_solve", device, [32, 64], [1, 8], repeat)
            + bench_extension("closed_form", device, [32, 64], [1, 8], repeat),
            "iterations": bench_iterations(device, 6 if args.quick else 10),
            "iterations_setting": {"channels": 64, "grid": 32},
            "scaling": bench_scaling(device, "extension", sizes, channels),
            "upsampler": bench_upsampler(device),
        }
    publish(f"wrc_ops_{device.type}", device, results, markdown(results).splitlines())


if __name__ == "__main__":
    main()
