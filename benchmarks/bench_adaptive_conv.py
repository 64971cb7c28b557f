"""The adaptive convolution: fused torch_wrc kernels against the unfold reference, at FeatUp's Table 6 shapes.

    python -m benchmarks.bench_adaptive_conv [--device cuda] [--full] [--shapes B,H,W,C,k ...]

Shapes are (B, H, W, C, k) as in FeatUp's Table 6, plus the last layer of a JBU stack at 224 for
ViT-S (C = 384, k = 7). On the CPU the two largest Table 6 shapes and the JBU shape run with --full
only (the unfold reference alone needs 2-5 GB there). For each: forward and forward+backward time
(median), and peak extra memory above the inputs (CUDA: max allocated; CPU: peak RSS of a fresh
process), the reference and the extension in the same run. Targets: on CUDA at least 10x less peak
memory and 3x faster forward+backward; on the CPU at least 2x faster. --shapes replaces the list (e.g. a tiny
shape for a smoke run, with --memory-in-process: CPU memory measured in this process, less exact).
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import (
    cuda_peak_mib,
    publish,
    require_extension,
    rss_peak_mib,
    subprocess_peak_mib,
    time_call,
)

TABLE6 = [(1, 14, 14, 2048, 5), (1, 512, 512, 3, 5), (16, 32, 32, 2048, 5), (64, 14, 14, 2048, 5),
          (64, 64, 64, 16, 5), (64, 64, 64, 16, 7), (32, 512, 512, 3, 5), (64, 224, 224, 3, 5)]
JBU_LAST_LAYER = (1, 224, 224, 384, 7)
CPU_DEFAULT = TABLE6[:6]


def make_inputs(shape, device, requires_grad=False):
    b, h, w, c, k = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h + k - 1, w + k - 1, generator=g)
    f = torch.softmax(torch.randn(b, h, w, k * k, generator=g), dim=-1).view(b, h, w, k, k)
    return x.to(device).requires_grad_(requires_grad), f.to(device).requires_grad_(requires_grad)


def implementation(impl: str):
    from wrc.ops.adaptive_conv import adaptive_conv_reference

    return torch.ops.wrc.adaptive_conv if impl == "extension" else adaptive_conv_reference


def call(impl: str, x: torch.Tensor, f: torch.Tensor, backward: bool) -> None:
    out = implementation(impl)(x, f)
    if backward:
        out.backward(torch.ones_like(out))


def peak_mib(impl: str, shape, device: torch.device, backward: bool, in_process: bool = False) -> float:
    if device.type == "cuda":
        x, f = make_inputs(shape, device, backward)
        return cuda_peak_mib(lambda: call(impl, x, f, backward))
    if in_process:
        return cpu_peak_mib([impl, list(shape), backward])
    return subprocess_peak_mib("benchmarks.bench_adaptive_conv", [impl, list(shape), backward])


def cpu_peak_mib(spec: list) -> float:
    impl, shape, backward = spec
    import torch_wrc  # noqa: F401

    x, f = make_inputs(shape, torch.device("cpu"), backward)
    return rss_peak_mib(lambda: call(impl, x, f, backward))


def memory_worker(spec: str) -> None:
    print(cpu_peak_mib(json.loads(spec)))


def parse_shape(text: str) -> tuple[int, ...]:
    """'B,H,W,C,k' -> (B, H, W, C, k)."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 5 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape is B,H,W,C,k (five positive integers); got {text!r}")
    return shape


def bench_shape(shape, device: torch.device, repeat: int, in_process: bool = False) -> dict:
    row = {"shape": list(shape)}
    for impl in ("reference", "extension"):
        for mode, backward in (("forward", False), ("forward_backward", True)):
            x, f = make_inputs(shape, device, backward)
            row[f"{impl}_{mode}_ms"] = time_call(lambda i=impl, x=x, f=f, b=backward: call(i, x, f, b), device,
                                                 warmup=1, repeat=repeat, grad=backward)["median_ms"]
            row[f"{impl}_{mode}_peak_mib"] = peak_mib(impl, shape, device, backward, in_process)
    for mode in ("forward", "forward_backward"):
        row[f"speedup_{mode}"] = row[f"reference_{mode}_ms"] / row[f"extension_{mode}_ms"]
        row[f"memory_reduction_{mode}"] = row[f"reference_{mode}_peak_mib"] / max(row[f"extension_{mode}_peak_mib"],
                                                                                   1e-3)
    print(row, flush=True)
    return row


def markdown(rows: list[dict]) -> list[str]:
    lines = ["Shapes (B, H, W, C, k) from FeatUp's Table 6 (plus the last JBU layer at 224 for ViT-S where run). "
             "Peak MiB: extra memory above the inputs (CPU: peak RSS of a fresh process; CUDA: max allocated).", "",
             "| shape | mode | unfold ms | fused ms | speed-up | unfold peak MiB | fused peak MiB | memory reduction |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        for mode in ("forward", "forward_backward"):
            lines.append(f"| {tuple(r['shape'])} | {mode} | {r[f'reference_{mode}_ms']:.2f} | "
                         f"{r[f'extension_{mode}_ms']:.2f} | {r[f'speedup_{mode}']:.1f}x | "
                         f"{r[f'reference_{mode}_peak_mib']:.1f} | {r[f'extension_{mode}_peak_mib']:.1f} | "
                         f"{r[f'memory_reduction_{mode}']:.1f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="every Table 6 shape and the JBU layer, also on the CPU")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None, metavar="B,H,W,C,k",
                        help="shapes to run instead of the default list")
    parser.add_argument("--memory-in-process", action="store_true",
                        help="CPU: measure memory in this process instead of a fresh one per measurement")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return memory_worker(args.memory_worker)
    require_extension()
    device = torch.device(args.device)
    shapes = args.shapes or ([*TABLE6, JBU_LAST_LAYER] if args.full or device.type == "cuda" else CPU_DEFAULT)
    rows = [bench_shape(shape, device, args.repeat, args.memory_in_process) for shape in shapes]
    publish(f"adaptive_conv_{device.type}", device, rows, markdown(rows))


if __name__ == "__main__":
    main()
