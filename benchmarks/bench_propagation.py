"""DAVIS label propagation: the local-window implementation against the dense reference, same run, same inputs.

    python -m benchmarks.bench_propagation [--device cuda] [--repeat 2] [--threads 1]
        [--frames 8] [--channels 384] [--grid-scale 1.0] [--memory-in-process]

The protocol's 480p case on a 2x grid: an 832 x 480 frame, patch 16 -> 30 x 52 tokens -> a 60 x 104 grid, 384
channels (ViT-S), 8 context frames (the first + 7), 4 label channels, radius 12, top-5, temperature 0.1; and,
for reference, the default LiFT / WRC input (224 x 224, a 28 x 28 grid), where the 25 x 25 window covers almost
the whole grid, so there is little to save. For each: time (median of ``repeat`` calls after one warm-up), peak
extra memory above the inputs (CPU: peak RSS of a fresh process; CUDA: max allocated), and the largest
difference between the two outputs. Target at 480p: local peak memory <= 0.2x the dense one and the same soft
labels to 1e-6; whether it holds is printed and recorded. The recorded CPU result used ``--threads 1``: the local
form runs many small GEMMs, whose thread synchronisation a shared, loaded machine makes erratic. --frames,
--channels and --grid-scale shrink every case (a smoke run; the target is then judged on the shrunk 480p case),
--memory-in-process measures CPU memory here instead of in fresh processes.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import cuda_peak_mib, publish, rss_peak_mib, subprocess_peak_mib, time_call

SHAPES = {  # name: (context frames, channels, grid h, grid w, label channels)
    "davis_480p_2x": (8, 384, 60, 104, 4),
    "square_224_2x": (8, 384, 28, 28, 4),
}
TARGET_SHAPE, MEMORY_TARGET, TOLERANCE = "davis_480p_2x", 0.2, 1e-6


def make_inputs(shape, device: torch.device):
    n, d, h, w, channels = shape
    g = torch.Generator().manual_seed(0)
    target, sources = torch.randn(d, h, w, generator=g), torch.randn(n, d, h, w, generator=g)
    labels = torch.softmax(torch.randn(n, channels, h, w, generator=g), dim=1)  # soft labels, as queued frames have
    return target.to(device), sources.to(device), labels.to(device)


def implementation(impl: str):
    from evaluation.video.propagation import propagate_dense, propagate_local

    return propagate_local if impl == "local" else propagate_dense


def peak_mib(impl: str, shape, device: torch.device, in_process: bool = False) -> float:
    if device.type == "cuda":
        inputs = make_inputs(shape, device)
        return cuda_peak_mib(lambda: implementation(impl)(*inputs))
    if in_process:
        return cpu_peak_mib([impl, list(shape)])
    return subprocess_peak_mib("benchmarks.bench_propagation", [impl, list(shape)])


def cpu_peak_mib(spec: list) -> float:
    impl, shape = spec
    inputs = make_inputs(shape, torch.device("cpu"))
    return rss_peak_mib(lambda: implementation(impl)(*inputs))


def memory_worker(spec: str) -> None:
    print(cpu_peak_mib(json.loads(spec)))


def resized(shape, frames: int | None, channels: int | None, grid_scale: float) -> tuple[int, ...]:
    """A case with fewer frames / channels or a scaled grid (the label channels stay)."""
    n, d, h, w, labels = shape
    return (frames or n, channels or d, max(1, round(h * grid_scale)), max(1, round(w * grid_scale)), labels)


def bench_shape(name: str, shape, device: torch.device, repeat: int, in_process: bool = False) -> dict:
    inputs = make_inputs(shape, device)
    row = {"name": name, "shape": {"frames": shape[0], "channels": shape[1], "grid": [shape[2], shape[3]],
                                   "label_channels": shape[4]}}
    outputs = {}
    for impl in ("local", "dense"):
        outputs[impl] = implementation(impl)(*inputs)
        row[f"{impl}_ms"] = time_call(lambda i=impl: implementation(i)(*inputs), device, warmup=0,
                                      repeat=repeat)["median_ms"]
        row[f"{impl}_peak_mib"] = peak_mib(impl, shape, device, in_process)
    row["max_abs_difference"] = float((outputs["local"] - outputs["dense"]).abs().max())
    row["speedup"] = row["dense_ms"] / row["local_ms"]
    row["memory_ratio"] = row["local_peak_mib"] / max(row["dense_peak_mib"], 1e-3)
    print(row, flush=True)
    return row


def markdown(rows: list[dict], target: dict) -> list[str]:
    lines = ["Soft labels of one target frame (the first frame + 7 queued ones, radius 12, top-5, temperature 0.1). "
             "Peak MiB: extra memory above the inputs (CPU: peak RSS of a fresh process; CUDA: max allocated).", "",
             "| case | grid | local ms | dense ms | speed-up | local peak MiB | dense peak MiB | memory ratio | "
             "max abs diff |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        grid = "x".join(str(s) for s in r["shape"]["grid"])
        lines.append(f"| {r['name']} | {grid} | {r['local_ms']:.1f} | {r['dense_ms']:.1f} | {r['speedup']:.1f}x | "
                     f"{r['local_peak_mib']:.1f} | {r['dense_peak_mib']:.1f} | {r['memory_ratio']:.3f} | "
                     f"{r['max_abs_difference']:.2e} |")
    verdict = "holds" if target["holds"] else "does NOT hold"
    lines += ["", f"Target at {TARGET_SHAPE} (local peak <= {MEMORY_TARGET}x dense, same output to {TOLERANCE}): "
              f"{verdict} (memory ratio {target['memory_ratio']:.3f}, "
              f"max abs diff {target['max_abs_difference']:.2e})."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--frames", type=int, default=None, help="context frames of every case (default 8)")
    parser.add_argument("--channels", type=int, default=None, help="feature channels of every case (default 384)")
    parser.add_argument("--grid-scale", type=float, default=1.0, help="scale every case's grid (e.g. 0.25)")
    parser.add_argument("--memory-in-process", action="store_true",
                        help="CPU: measure memory in this process instead of a fresh one per measurement")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return memory_worker(args.memory_worker)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench_shape(name, resized(shape, args.frames, args.channels, args.grid_scale), device, args.repeat,
                        args.memory_in_process) for name, shape in SHAPES.items()]
    at = next(r for r in rows if r["name"] == TARGET_SHAPE)
    target = {"shape": TARGET_SHAPE, "memory_ratio": at["memory_ratio"], "max_abs_difference": at["max_abs_difference"],
              "holds": at["memory_ratio"] <= MEMORY_TARGET and at["max_abs_difference"] <= TOLERANCE}
    print(f"target (local peak <= {MEMORY_TARGET}x dense and |local - dense| <= {TOLERANCE} at {TARGET_SHAPE}): "
          f"{'holds' if target['holds'] else 'does NOT hold'}")
    publish(f"propagation_{device.type}", device, rows, markdown(rows, target), target=target)


if __name__ == "__main__":
    main()
