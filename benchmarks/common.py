"""Timing, memory and result-writing helpers shared by the benchmarks (no Hydra needed); the environment header
of every result comes from wrc.provenance."""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from wrc.provenance import environment

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeat: int = 10,
              grad: bool = False) -> dict[str, float]:
    """Median and spread of ``repeat`` timed calls after ``warmup`` untimed ones, in milliseconds."""
    with torch.set_grad_enabled(grad):
        for _ in range(warmup):
            fn()
        synchronize(device)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x: the measured growth exponent."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux: since the last ``reset_peak_rss``), in MiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak since start (KiB on Linux)


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def reset_peak_rss() -> None:
    """Linux: make the peak-RSS counter (VmHWM) start again from the current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def require_extension() -> None:
    """Exit with a clear message when the torch_wrc extension is not built (the benchmark compares it)."""
    import torch_wrc

    if not torch_wrc.is_available():
        raise SystemExit(f"torch_wrc is not available ({torch_wrc.unavailable_reason()}): build it first")


def cuda_peak_mib(call: Callable[[], object]) -> float:
    """Extra CUDA memory at the peak of ``call()`` above what is allocated before it (after one warm-up)."""
    call()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def rss_peak_mib(call: Callable[[], object]) -> float:
    """Extra resident memory at the peak of ``call()`` (after one warm-up: lazy set-up and .grad buffers are not
    the call's cost); run it in a fresh process (``subprocess_peak_mib``)."""
    call()
    base = current_rss_mib()
    reset_peak_rss()
    call()
    return peak_rss_mib() - base


def cuda_held_mib(forward: Callable[[], torch.Tensor]) -> float:
    """CUDA memory that ``forward()`` leaves allocated besides its output while the output is alive: what autograd
    keeps for the backward pass (after one warm-up call, whose graph is freed)."""
    forward()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    out = forward()
    torch.cuda.synchronize()
    return (torch.cuda.memory_allocated() - base - out.numel() * out.element_size()) / 2**20


def rss_held_mib(forward: Callable[[], torch.Tensor]) -> float:
    """Resident memory that ``forward()`` leaves besides its output while the output is alive (the CPU twin of
    ``cuda_held_mib``); run it in a fresh process (``subprocess_peak_mib``)."""
    forward()
    base = current_rss_mib()
    out = forward()
    return current_rss_mib() - base - out.numel() * out.element_size() / 2**20


def subprocess_peak_mib(module: str, spec: object) -> float:
    """Run ``python -m <module> --memory-worker <spec as JSON>`` in a fresh process and return the last number it
    prints (the worker's measurement in MiB, e.g. its peak RSS above its inputs from ``rss_peak_mib``)."""
    repo_root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", module, "--memory-worker", json.dumps(spec)], cwd=repo_root,
                          capture_output=True, text=True, check=True,
                          # a fixed mmap threshold: every large buffer is mapped, and unmapped when freed, so peak
                          # RSS sees each allocation instead of heap pages recycled from the warm-up call
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"})
    return float(proc.stdout.strip().splitlines()[-1])


def write_results(name: str, record: dict, table: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (a header with device, date and command, then ``table``)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.md"
    json_path.write_text(json.dumps(record, indent=2))
    env = record["environment"]
    header = (f"# {name}\n\n- device: {env['device']}\n- date: {env['date']}\n- torch: {env['torch']}\n"
              f"- commit: {env['commit']}\n- command: `{env['command']}`\n\n")
    md_path.write_text(header + table + "\n")
    return json_path, md_path


def publish(name: str, device: torch.device, results: object, lines: list[str], **extra: object) -> None:
    """Write ``results`` (with the environment) and the Markdown table, then print both paths and the table."""
    record = {"environment": environment(device), **extra, "results": results}
    for path in write_results(name, record, "\n".join(lines)):
        print(path)
    print("\n".join(lines))
