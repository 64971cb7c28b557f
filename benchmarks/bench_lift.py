"""LiFT benchmark: quickstart training throughput and memory; bilinear vs LiFT inference at 224 and 448.

    python -m benchmarks.bench_lift [--device cuda] [--train-steps 60]

Inference uses DINOv2 ViT-S/14 shapes (384 channels, patch 14; random weights cost the same as
pretrained ones) and reports each upsampler's time as a ratio to bilinear and to the backbone's own
forward pass in the same run. Training runs the quickstart configuration in a subprocess so that its
peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import environment, peak_rss_mib, time_call, write_results
from wrc import FrozenBackbone, create_upsampler

REPO_ROOT = Path(__file__).resolve().parents[1]

# config/experiment/quickstart.yaml, composed (tests/test_benchmarks.py keeps the two in sync).
QUICKSTART = {
    "seed": 0, "device": "cpu", "precision": "fp32", "resume": False,
    "backbone": {"name": "test_vit", "weights": "random", "layer": -1, "facet": "token", "final_norm": True,
                 "size_policy": "resize", "precision": "fp32"},
    "model": {"name": "lift", "image_channels": 32},
    "objective": {"name": "lift_multiscale", "scale_weights": [1.0, 1.0], "distance": "cosine",
                  "jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8}},
    "data": {"name": "samples", "num_images": 64, "image_size": 224, "min_scale": 0.5, "batch_size": 8,
             "num_workers": 0},
    "optimizer": {"name": "adamw", "lr": 2.0e-3, "betas": [0.9, 0.999], "weight_decay": 1.0e-4,
                  "scheduler": "cosine", "warmup_steps": 40, "min_lr_ratio": 0.01},
    "train": {"max_steps": 800, "log_every": 20, "ckpt_every": 200, "keep_checkpoints": 3, "grad_clip": 1.0,
              "sync_batchnorm": True},
    "logger": {"tensorboard": False, "wandb": False, "wandb_project": "wrc", "wandb_mode": "offline"},
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


def bench_training(device: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = {**QUICKSTART, "device": device, "run_dir": str(Path(tmp) / "run"),
                  "train": {**QUICKSTART["train"], "max_steps": steps, "log_every": 10, "ckpt_every": 10**9}}
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config))
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_lift", "--train-worker", str(path)],
                              cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        return {"steps": steps, "batch_size": config["data"]["batch_size"],
                "image_size": config["data"]["image_size"], **json.loads(proc.stdout.strip().splitlines()[-1])}


def bench_inference(device: torch.device, sizes: tuple[int, ...], batch: int) -> list[dict]:
    backbone = FrozenBackbone("vit_small_patch14_dinov2", "random").to(device)
    upsamplers = {name: create_upsampler(name, backbone.embed_dim, backbone.patch_size).to(device).eval()
                  for name in ("bilinear", "lift")}
    rows = []
    for size in sizes:
        image = torch.rand(batch, 3, size, size, device=device)
        features = backbone(image)
        target = (features.shape[-2] * 2, features.shape[-1] * 2)
        backbone_ms = time_call(lambda image=image: backbone(image), device)["median_ms"]
        times = {name: time_call(lambda up=up, f=features, i=image, t=target: up(f, i, t), device)["median_ms"]
                 for name, up in upsamplers.items()}
        for name, ms in times.items():
            rows.append({"upsampler": name, "image_size": size, "batch": batch, "grid": list(features.shape[-2:]),
                         "output_grid": list(target), "median_ms": ms, "vs_bilinear": ms / times["bilinear"],
                         "vs_backbone": ms / backbone_ms, "backbone_ms": backbone_ms})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_worker:
        return train_worker(args.train_worker)

    device = torch.device(args.device)
    training = bench_training(args.device, args.train_steps)
    inference = bench_inference(device, (224, 448), args.batch)
    record = {"environment": environment(device), "training": training, "inference": inference}
    lines = [
        "## Quickstart training (test_vit, LiFT, 224 px crops, batch 8)", "",
        "| images/s | peak memory (MiB) | memory measured as | process RSS before training (MiB) |",
        "| ---: | ---: | --- | ---: |",
        f"| {training['images_per_s']:.1f} | {training['peak_memory_mib']:.0f} | {training['memory_kind']} "
        f"| {training['baseline_rss_mib']:.0f} |", "",
        f"## Inference, ViT-S/14 features, 2x (batch {args.batch})", "",
        "| upsampler | image | grid -> output | median ms | x bilinear | x backbone forward |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in inference:
        lines.append(f"| {row['upsampler']} | {row['image_size']} | {row['grid'][0]}x{row['grid'][1]} -> "
                     f"{row['output_grid'][0]}x{row['output_grid'][1]} | {row['median_ms']:.2f} | "
                     f"{row['vs_bilinear']:.1f} | {row['vs_backbone']:.2f} |")
    tag = "cuda" if device.type == "cuda" else "cpu"
    for path in write_results(f"lift_{tag}", record, "\n".join(lines)):
        print(path)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
