"""ViTDet's Mask R-CNN with each pyramid: images/s and peak memory of the whole detector, ratios to tconv.

    python -m benchmarks.bench_detection [--device cpu|cuda] [--size 1024] [--batch 1]
        [--variants tconv bilinear lift wrc] [--backbone vit_small_patch16_224] [--no-train]

The detector of evaluation/detection/model.py at ViTDet's sizes by default (256 channels, ViTDet's heads, 1000
proposals, 100 detections, COCO's 80 categories) on a ViT-S/16 with random weights (they cost what pretrained ones
cost), with p3 / p2 from ViTDet's transposed convolutions (``tconv``, the baseline), bilinear, LiFT or WRC (their 2x
applied twice for 4x, guided by the image). Random heads score every box below torchvision's 0.05 threshold, which
would skip the mask head: the threshold is set to 0, so every image carries its 100 detections through the mask
head, as a trained detector's do. Measured, each variant in the same run:

- inference: images/s of ``detector(images)`` in eval mode (median of timed calls after warm-up; the variants
  take turns, one call each per round, so that a change of load on a shared machine hits all alike);
- a training step (unless --no-train): forward, backward and AdamW step of LiFT's step 3 (ViT and upsampler
  frozen; tconv's convolutions frozen too; the pyramid's projections, RPN and ROI heads train) on 8 random
  boxes with masks per image;
- peak memory of each: CUDA: ``max_memory_allocated`` during a call (after a warm-up one) above what is allocated
  before it (the detector's weights and inputs, and AdamW's state for training); CPU: the peak RSS above the same,
  in a fresh process per measurement (--memory-in-process: in this process, less exact).

Precision: the recipe's (bf16 autocast on CUDA, fp32 on the CPU; --precision). Default size: 1024 (ViTDet's) on
CUDA, 512 on the CPU, where 1024 takes minutes per variant. Results: benchmarks/results/detection_<device>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import cuda_peak_mib, publish, rss_peak_mib, subprocess_peak_mib, synchronize
from evaluation.detection.coco import CategoryMap
from evaluation.detection.settings import DetectorModel
from evaluation.detection.train import autocast_for, make_detector
from wrc import FrozenBackbone
from wrc.arguments import positive_int

VARIANTS = ("tconv", "bilinear", "lift", "wrc")
COCO_CATEGORIES = CategoryMap(tuple(range(1, 81)))
BOXES_PER_IMAGE = 8


def build(variant: str, backbone_name: str, size: int, proposals: int, detections: int, channels: int,
          device: torch.device, train: bool) -> torch.nn.Module:
    """The detector with ``variant``'s pyramid, in eval mode (inference) or train mode with frozen ViT and
    upsampler (LiFT's step 3)."""
    torch.manual_seed(0)
    backbone = FrozenBackbone(backbone_name, "random")
    model = DetectorModel(pyramid=variant, freeze="backbone_upsampler", out_channels=channels,
                          representation_size=4 * channels, proposals_per_image=proposals,
                          detections_per_image=detections)
    detector = make_detector(model, backbone, COCO_CATEGORIES, size).to(device)
    detector.roi_heads.score_thresh = 0.0  # random heads: keep every detection, so the mask head runs (docstring)
    return detector.train(train)


def random_targets(batch: int, size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """``BOXES_PER_IMAGE`` random boxes per image, each with its box-shaped mask and a random category."""
    gen = torch.Generator().manual_seed(1)
    targets = []
    for _ in range(batch):
        corners = torch.rand(BOXES_PER_IMAGE, 2, 2, generator=gen) * size
        low, high = corners.amin(1).floor(), corners.amax(1).ceil() + 8
        boxes = torch.cat([low, high.clamp(max=size)], 1)
        masks = torch.zeros(BOXES_PER_IMAGE, size, size, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist(), strict=True):
            mask[y1:y2, x1:x2] = 1
        labels = torch.randint(1, COCO_CATEGORIES.num_classes, (BOXES_PER_IMAGE,), generator=gen)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return targets


def step_fn(spec: dict, device: torch.device) -> Callable[[], object]:
    """One call of ``spec["mode"]`` (infer | train) on a detector built as ``spec`` says."""
    detector = build(spec["variant"], spec["backbone"], spec["size"], spec["proposals"], spec["detections"],
                     spec["channels"], device, spec["mode"] == "train")
    return make_step(detector, spec, device)


def make_step(detector: torch.nn.Module, spec: dict, device: torch.device) -> Callable[[], object]:
    """``detector(images)`` without gradients (infer), or a forward, backward and AdamW step on random targets."""
    images = list(torch.rand(spec["batch"], 3, spec["size"], spec["size"], generator=torch.Generator().manual_seed(0))
                  .to(device).unbind(0))
    autocast = autocast_for(spec["precision"], device)
    if spec["mode"] == "infer":
        def infer() -> object:
            with torch.no_grad(), autocast:
                return detector(images)
        return infer
    targets = random_targets(spec["batch"], spec["size"], device)
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        with autocast:
            loss = sum(detector(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return train_step


def peak_mib(spec: dict, device: torch.device, in_process: bool) -> float:
    if device.type == "cuda":
        return cuda_peak_mib(step_fn(spec, device))
    if in_process:
        return rss_peak_mib(step_fn(spec, device))
    return subprocess_peak_mib("benchmarks.bench_detection", spec)


def memory_worker(spec: str) -> None:
    print(rss_peak_mib(step_fn(json.loads(spec), torch.device("cpu"))))


def interleaved_ms(calls: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeat: int,
                   grad: bool) -> dict[str, list[float]]:
    """Times of ``repeat`` rounds that call every variant once each (after ``warmup`` rounds), in milliseconds: on a
    shared machine a change of load hits every variant alike instead of the one that happened to run then."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.set_grad_enabled(grad):
        for round_ in range(warmup + repeat):
            for name, call in calls.items():
                synchronize(device)
                start = time.perf_counter()
                call()
                synchronize(device)
                if round_ >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    return times


def bench(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = {v: {"variant": v, "size": args.size, "batch": args.batch} for v in args.variants}
    for mode in ("infer",) if args.no_train else ("infer", "train"):
        specs = {v: {"variant": v, "backbone": args.backbone, "size": args.size, "batch": args.batch,
                     "proposals": args.proposals, "detections": args.detections, "channels": args.channels,
                     "precision": args.precision, "mode": mode} for v in args.variants}
        times = interleaved_ms({v: step_fn(spec, device) for v, spec in specs.items()}, device, args.warmup,
                               args.repeat, grad=mode == "train")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for variant, row in rows.items():
            row[f"{mode}_ms"] = statistics.median(times[variant])
            row[f"{mode}_min_ms"] = min(times[variant])
            row[f"{mode}_images_per_s"] = args.batch * 1e3 / row[f"{mode}_ms"]
            row[f"{mode}_peak_mib"] = peak_mib(specs[variant], device, args.memory_in_process)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(mode, row, flush=True)
    return list(rows.values())


def add_ratios(rows: list[dict]) -> None:
    """Each row's time and memory as multiples of the tconv row's (when tconv ran)."""
    base = next((r for r in rows if r["variant"] == "tconv"), None)
    if base is None:
        return
    for row in rows:
        for mode in ("infer", "train"):
            if f"{mode}_ms" in row:
                row[f"{mode}_time_vs_tconv"] = row[f"{mode}_ms"] / base[f"{mode}_ms"]
                row[f"{mode}_memory_vs_tconv"] = row[f"{mode}_peak_mib"] / max(base[f"{mode}_peak_mib"], 1e-3)


def markdown(rows: list[dict], args: argparse.Namespace, device: torch.device) -> list[str]:
    memory = "max_memory_allocated above weights and inputs" if device.type == "cuda" else (
        "peak RSS above weights and inputs, " + ("in this process" if args.memory_in_process else "fresh process"))
    lines = [f"Mask R-CNN (ViTDet's heads, {args.channels} channels, {args.proposals} proposals, {args.detections} "
             f"detections, 80 categories) on {args.backbone} (random weights), {args.size} x {args.size}, "
             f"batch {args.batch}, precision {args.precision}. Peak MiB: {memory}. x tconv: the ratio to the "
             "transposed-conv pyramid in this run (time: > 1 is slower).", ""]
    modes = [m for m in ("infer", "train") if f"{m}_ms" in rows[0]]
    for mode in modes:
        title = "inference" if mode == "infer" else "training step (LiFT's step 3: ViT and upsampler frozen)"
        lines += [f"**{title}**", "", "| pyramid | images/s | ms | x tconv time | peak MiB | x tconv memory |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            lines.append(f"| {r['variant']} | {r[f'{mode}_images_per_s']:.2f} | {r[f'{mode}_ms']:.0f} | "
                         f"{r.get(f'{mode}_time_vs_tconv', float('nan')):.2f} | {r[f'{mode}_peak_mib']:.0f} | "
                         f"{r.get(f'{mode}_memory_vs_tconv', float('nan')):.2f} |")
        lines.append("")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="image side (default 1024 on CUDA, 512 on the CPU)")
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="tconv, bilinear or any upsampler")
    parser.add_argument("--backbone", default="vit_small_patch16_224", help="timm ViT name (random weights)")
    parser.add_argument("--proposals", type=positive_int, default=1000,
                        help="RPN proposals kept per image (ViTDet: 1000)")
    parser.add_argument("--detections", type=positive_int, default=100, help="detections per image (ViTDet: 100)")
    parser.add_argument("--channels", type=positive_int, default=256,
                        help="pyramid and head channels (ViTDet: 256; the box head's fc is 4x this: 1024)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=positive_int, default=5)
    parser.add_argument("--memory-in-process", action="store_true",
                        help="CPU: measure memory in this process instead of a fresh one per measurement")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 1024 if args.device.startswith("cuda") else 512
    if args.size % 64:
        parser.error(f"--size must be a multiple of 64 (the detector pads its batch to 64); got {args.size}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        return memory_worker(args.memory_worker)
    device = torch.device(args.device)
    rows = bench(args, device)
    add_ratios(rows)
    publish(f"detection_{device.type}", device, rows, markdown(rows, args, device),
            setting={k: v for k, v in vars(args).items() if k != "memory_worker"})


if __name__ == "__main__":
    main()
