"""Upsampler inference time for DINOv2 ViT-S/14 features (384 channels, patch 14), 2x, at 224 and 448.

    python -m benchmarks.bench_inference [--device cuda] [--batch 1 8] [--models bilinear lift wrc ...]
        [--sizes 224 448] [--backbone vit_small_patch14_dinov2]

Random weights cost the same as pretrained ones (--backbone takes any timm ViT name, e.g. test_vit for a
smoke run). Each time is also given as a ratio to bilinear and to the backbone's own forward pass, measured in
the same run.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import publish, time_call
from wrc import FrozenBackbone
from wrc.extractor import build_extractor

DEFAULT_MODELS = ["bilinear", "lift", "wrc", "converse2d", "wrc_tconv"]


def bench(device: torch.device, models: list[str], sizes: list[int], batches: list[int], repeat: int,
          backbone_name: str = "vit_small_patch14_dinov2") -> list[dict]:
    backbone = FrozenBackbone(backbone_name, "random").to(device)
    extractors = {name: build_extractor(backbone, name, device=device) for name in models}
    rows = []
    for batch in batches:
        for size in sizes:
            image = torch.rand(batch, 3, size, size, device=device)
            features = backbone(image)
            target = (features.shape[-2] * 2, features.shape[-1] * 2)
            backbone_ms = time_call(lambda image=image: backbone(image), device, repeat=repeat)["median_ms"]
            times = {name: time_call(lambda e=e, f=features, i=image, t=target: e.upsample(f, i, t), device,
                                     repeat=repeat)["median_ms"] for name, e in extractors.items()}
            for name, ms in times.items():
                rows.append({"upsampler": name, "batch": batch, "image_size": size, "grid": list(features.shape[-2:]),
                             "median_ms": ms, "vs_bilinear": ms / times.get("bilinear", ms),
                             "vs_backbone": ms / backbone_ms, "backbone_ms": backbone_ms})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 448])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2", help="timm ViT name (random weights)")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = bench(device, args.models, args.sizes, args.batch, args.repeat, args.backbone)
    name = "DINOv2 ViT-S/14" if args.backbone == "vit_small_patch14_dinov2" else args.backbone
    lines = [f"{name} features, 2x (grid -> 2 x grid). Median of timed calls after warm-up.", "",
             "| upsampler | batch | image | grid | median ms | x bilinear | x backbone forward |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['upsampler']} | {r['batch']} | {r['image_size']} | {r['grid'][0]}x{r['grid'][1]} | "
                     f"{r['median_ms']:.2f} | {r['vs_bilinear']:.1f} | {r['vs_backbone']:.2f} |")
    publish(f"inference_{device.type}", device, rows, lines, backbone=args.backbone)


if __name__ == "__main__":
    main()
