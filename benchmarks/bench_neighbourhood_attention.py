"""Neighbourhood attention: the fused torch_wrc op against the gather reference, at NAF's shapes.

    python -m benchmarks.bench_neighbourhood_attention [--device cuda] [--sizes 112 224 448]
        [--reference-sizes 112] [--average-heads] [--memory-in-process]

NAF's setting: D = 256 query/key channels in 4 heads, C = 384 values (ViT-S) split per head, a 32 x 32 token grid,
9 x 9 windows, batch 1, square outputs of side 112, 224 and 448. For each output size: forward and forward+backward
time (median) and peak extra memory of forward+backward above the inputs (CPU: peak RSS of a fresh process; CUDA: max
allocated), the reference and the fused op in the same run. The reference keeps every gathered window for its
backward (about 200 KB per output pixel here: 2.6 GB at 112, 10 GB at 224, 42 GB at 448), so on the CPU it runs at
112 only unless --reference-sizes says otherwise. Targets (CPU): forward+backward >= 3x faster and <= 0.3x the
reference's peak memory; the fused op's memory grows linearly with the output pixels (the log-log slope of its peak
over the two largest sizes, <= 1.1; its constant part, the per-piece buffers of the backward, shows at small sizes).
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.common import (
    cuda_peak_mib,
    loglog_slope,
    publish,
    require_extension,
    rss_peak_mib,
    subprocess_peak_mib,
    time_call,
)
from wrc.ops.neighbourhood_attention import neighbourhood_attention_reference

NAF = {"dim": 256, "heads": 4, "channels": 384, "tokens": 32, "kernel": 9, "batch": 1}
SIZES = (112, 224, 448)
CPU_REFERENCE_SIZES = (112,)


def make_inputs(setting: dict, size: int, device: torch.device, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    b, d, c, t = setting["batch"], setting["dim"], setting["channels"], setting["tokens"]
    q = torch.randn(b, d, size, size, generator=g)
    k = torch.randn(b, d, t, t, generator=g)
    v = torch.randn(b, c, t, t, generator=g)
    return [x.to(device).requires_grad_(requires_grad) for x in (q, k, v)]


def call(impl: str, setting: dict, q, k, v, backward: bool) -> None:
    kernel, heads, average = setting["kernel"], setting["heads"], setting["average_heads"]
    scale = (setting["dim"] // heads) ** -0.5
    if impl == "fused":
        out = torch.ops.wrc.neighbourhood_attention(q, k, v, kernel, heads, average, scale)
    else:
        out = neighbourhood_attention_reference(q, k, v, kernel, heads, average_heads=average, scale=scale)
    if backward:
        out.backward(torch.ones_like(out))


def cpu_peak_mib(spec: list) -> float:
    impl, setting, size = spec
    import torch_wrc  # noqa: F401  (registers the op's autograd)

    q, k, v = make_inputs(setting, size, torch.device("cpu"), True)
    return rss_peak_mib(lambda: call(impl, setting, q, k, v, True))


def peak_mib(impl: str, setting: dict, size: int, device: torch.device, in_process: bool) -> float:
    """Peak extra memory of one forward+backward above its inputs."""
    if device.type == "cuda":
        q, k, v = make_inputs(setting, size, device, True)
        return cuda_peak_mib(lambda: call(impl, setting, q, k, v, True))
    if in_process:
        return cpu_peak_mib([impl, setting, size])
    return subprocess_peak_mib("benchmarks.bench_neighbourhood_attention", [impl, setting, size])


def bench_size(setting: dict, size: int, device: torch.device, run_reference: bool, repeat: int,
               in_process: bool) -> dict:
    row: dict = {"size": size, "output_pixels": setting["batch"] * size * size}
    for impl in ("reference", "fused") if run_reference else ("fused",):
        for mode, backward in (("forward", False), ("forward_backward", True)):
            q, k, v = make_inputs(setting, size, device, backward)
            row[f"{impl}_{mode}_ms"] = time_call(lambda i=impl, q=q, k=k, v=v, b=backward: call(i, setting, q, k, v, b),
                                                 device, warmup=1, repeat=repeat, grad=backward)["median_ms"]
        row[f"{impl}_forward_backward_peak_mib"] = peak_mib(impl, setting, size, device, in_process)
    if run_reference:
        for mode in ("forward", "forward_backward"):
            row[f"speedup_{mode}"] = row[f"reference_{mode}_ms"] / row[f"fused_{mode}_ms"]
        row["memory_ratio_forward_backward"] = (row["fused_forward_backward_peak_mib"] /
                                                max(row["reference_forward_backward_peak_mib"], 1e-3))
    print(row, flush=True)
    return row


def memory_growth(rows: list[dict]) -> dict:
    """How the fused op's peak memory grows with the output pixels: the log-log slope over the two largest sizes
    (1 = linear) and the extra MiB per 1000 output pixels between them."""
    if len(rows) < 2:
        return {}
    a, b = sorted(rows, key=lambda r: r["output_pixels"])[-2:]
    pixels, peaks = [a["output_pixels"], b["output_pixels"]], [a["fused_forward_backward_peak_mib"],
                                                                  b["fused_forward_backward_peak_mib"]]
    return {"sizes": [a["size"], b["size"]], "loglog_slope": loglog_slope(pixels, [max(p, 1e-3) for p in peaks]),
            "mib_per_1000_pixels": 1000 * (peaks[1] - peaks[0]) / (pixels[1] - pixels[0])}


def markdown(setting: dict, rows: list[dict], growth: dict) -> list[str]:
    mode = "averaged heads" if setting["average_heads"] else "values split per head"
    lines = [f"D = {setting['dim']} in {setting['heads']} heads, C = {setting['channels']} ({mode}), "
             f"{setting['tokens']} x {setting['tokens']} tokens, {setting['kernel']} x {setting['kernel']} windows, "
             f"batch {setting['batch']}. Peak MiB: extra memory of forward+backward above the inputs (CPU: peak RSS "
             "of a fresh process; CUDA: max allocated). Targets: forward+backward >= 3x faster, <= 0.3x peak memory.",
             "", "| output | mode | reference ms | fused ms | speed-up |", "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        for m in ("forward", "forward_backward"):
            ref = f"{r[f'reference_{m}_ms']:.2f}" if f"reference_{m}_ms" in r else "not run"
            speedup = f"{r[f'speedup_{m}']:.1f}x" if f"speedup_{m}" in r else "-"
            lines.append(f"| {r['size']} x {r['size']} | {m} | {ref} | {r[f'fused_{m}_ms']:.2f} | {speedup} |")
    lines += ["", "| output | pixels | reference peak MiB | fused peak MiB | fused / reference |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ref = r.get("reference_forward_backward_peak_mib")
        ratio = f"{r['memory_ratio_forward_backward']:.3f}x" if "memory_ratio_forward_backward" in r else "-"
        lines.append(f"| {r['size']} x {r['size']} | {r['output_pixels']} | "
                     f"{'not run' if ref is None else f'{ref:.1f}'} | {r['fused_forward_backward_peak_mib']:.1f} | "
                     f"{ratio} |")
    if growth:
        lines += ["", f"Fused memory growth between {growth['sizes'][0]} and {growth['sizes'][1]}: log-log slope "
                      f"{growth['loglog_slope']:.2f} in the output pixels (1 = linear), "
                      f"{growth['mib_per_1000_pixels']:.2f} MiB per 1000 output pixels."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="square output sides")
    parser.add_argument("--reference-sizes", nargs="*", type=int, default=None,
                        help="sides at which the reference runs too (CPU default: 112; CUDA: every size)")
    for name, value in NAF.items():
        parser.add_argument(f"--{name}", type=int, default=value)
    parser.add_argument("--average-heads", action="store_true", help="AnyUp's averaged heads instead of NAF's split")
    parser.add_argument("--memory-in-process", action="store_true",
                        help="CPU: measure memory in this process instead of a fresh one per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return print(cpu_peak_mib(json.loads(args.memory_worker)))
    require_extension()
    device = torch.device(args.device)
    setting = {name: getattr(args, name) for name in NAF} | {"average_heads": args.average_heads}
    reference_sizes = args.reference_sizes
    if reference_sizes is None:
        reference_sizes = args.sizes if device.type == "cuda" else CPU_REFERENCE_SIZES
    rows = [bench_size(setting, size, device, size in reference_sizes, args.repeat, args.memory_in_process)
            for size in args.sizes]
    growth = memory_growth(rows)
    publish(f"neighbourhood_attention_{device.type}", device, rows, markdown(setting, rows, growth),
            setting=setting, memory_growth=growth)


if __name__ == "__main__":
    main()
