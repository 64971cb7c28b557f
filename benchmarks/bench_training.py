"""Training throughput and peak memory of the quickstart configuration (and of LiFT in its place).

    python -m benchmarks.bench_training [--device cuda] [--steps 40] [--image-size 224] [--batch-size 8]
        [--variants wrc lift]

Each configuration trains in its own subprocess, so that its peak memory is its own (CUDA: max
allocated; CPU: process peak RSS, reported beside the RSS before any model exists). The quickstart
configuration is benchmarks/configs/quickstart.json, the composed ``experiment=quickstart`` (kept
identical by tests/test_benchmarks.py), so this runs without Hydra.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mib, publish
from benchmarks.quickstart import QUICKSTART

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # --variants name: (row label, overrides of the quickstart config)
    "wrc": ("quickstart (wrc, wrc_multicrop)", {}),
    "lift": ("lift, lift_multiscale", {"model": {"name": "lift", "image_channels": 32},
                                       "objective": {"name": "lift_multiscale", "jitter": {}}}),
}


def train_worker(config_path: str) -> None:
    """Subprocess body: train, then print throughput and peak memory as one JSON line."""
    from wrc.training import train

    config = json.loads(Path(config_path).read_text())
    device = torch.device(config["device"])
    baseline = peak_rss_mib()  # interpreter + torch + timm, before any model or data exists
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = train(config)
    rates = [h["images_per_s"] for h in result.history[1:]]  # the first window includes start-up
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()
    print(json.dumps({"images_per_s": sum(rates) / len(rates), "peak_memory_mib": peak, "baseline_rss_mib": baseline,
                      "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"}))


def bench(variant: dict, device: str, steps: int, image_size: int | None = None,
          batch_size: int | None = None) -> dict:
    config = copy.deepcopy(QUICKSTART)
    config.update(copy.deepcopy(variant))
    config["data"].update({k: v for k, v in (("image_size", image_size), ("batch_size", batch_size)) if v})
    with tempfile.TemporaryDirectory() as tmp:
        config.update(device=device, run_dir=str(Path(tmp) / "run"))
        # two logged windows at least: the first (start-up included) is not counted
        config["train"].update(max_steps=steps, log_every=max(1, min(10, steps // 2)), ckpt_every=10**9)
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config))
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_training", "--worker", str(path)],
                              cwd=REPO_ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        return {"steps": steps, "batch_size": config["data"]["batch_size"], "image_size": config["data"]["image_size"],
                **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=None, help="crop size (default: the quickstart's)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the quickstart's)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return train_worker(args.worker)
    if args.steps < 2:
        raise SystemExit(f"--steps must be >= 2 (the first logged window includes start-up); got {args.steps}")
    device = torch.device(args.device)
    rows = {VARIANTS[name][0]: bench(VARIANTS[name][1], args.device, args.steps, args.image_size, args.batch_size)
            for name in args.variants}
    first = next(iter(rows.values()))
    lines = [f"Quickstart data ({first['image_size']} px crops, batch {first['batch_size']}), test_vit backbone.", "",
             "| configuration | images/s | peak memory (MiB) | measured as | RSS before training (MiB) |",
             "| --- | ---: | ---: | --- | ---: |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['images_per_s']:.1f} | {row['peak_memory_mib']:.0f} | {row['memory_kind']} "
                     f"| {row['baseline_rss_mib']:.0f} |")
    publish(f"training_{device.type}", device, rows, lines)


if __name__ == "__main__":
    main()
