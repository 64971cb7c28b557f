"""The synthetic benchmark: every upsampler against the known ground-truth field of generated scenes.

    python -m evaluation.synthetic                                   # the committed table, CPU minutes
    python -m evaluation.synthetic --methods bilinear lift --steps 100 --out /tmp/synthetic

Setting: 128-pixel scenes (scenes.py) and the oracle backbone (oracle.py, 32 channels, 8-pixel
patches): upsamplers see 16 x 16 tokens and must produce the 128 x 128 field. Learned methods are
trained with their own objective on training scenes, with the same steps, seed, batch and optimiser;
their run directories (``--work-dir``) keep checkpoints, so an interrupted benchmark resumes where
it stopped. Training-free methods run as they are; "large_image" (the oracle on an 8x larger image)
is a reference, not a competitor.

Metrics on held-out scenes, at the pixel grid:
- cosine (higher is better) and rel_l2 = ||pred - field|| / ||field|| per image (lower is better);
- cosine_2x: the cosine at twice the token grid, where the field is averaged over each cell (the
  factor WRC, Converse2D and LiFT are trained for; the pixel grid takes them three steps);
- miou and boundary_f: the JAFAR/WRC probe protocol. A linear 1x1 probe is fitted on each method's
  own pixel-grid output for ``--probe-scenes`` training scenes, then classifies the held-out scenes;
  boundary_f scores the class edges of its prediction within 2 pixels of the true ones.
The row "ground_truth" is the field itself: the ceiling of miou and boundary_f.
Each method's record is written to ``--out/<name>.json`` (protocol "synthetic"), and the table to
``--out/synthetic.md`` and ``.csv`` (``python -m evaluation.tables synthetic <out>`` rebuilds it).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import environment
from evaluation.metrics import BoundaryFScore, ConfusionMatrix
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.scenes import CLASSES, SyntheticScenes
from evaluation.tables import build_table, collect
from wrc.checkpoint import latest_checkpoint
from wrc.upsamplers import Upsampler, create_upsampler

log = logging.getLogger("wrc")

MULTIVIEW = {"name": "featup_multiview"}
WRC_MODEL = {"image_channels": 32, "feature_skip": True, "kernel_size": 2}
TRAINED: dict[str, tuple[dict, dict]] = {  # name: (model config, its own objective)
    "wrc": ({"name": "wrc", **WRC_MODEL}, {"name": "wrc_multicrop"}),
    "converse2d": ({"name": "converse2d", **WRC_MODEL}, {"name": "wrc_multicrop"}),
    "wrc_tconv": ({"name": "wrc_tconv", "image_channels": 32, "feature_skip": True}, {"name": "wrc_multicrop"}),
    # the paper's network, whose solve only lifts inner features (the Table 3 ablation without the output solve)
    "wrc_paper_network": ({"name": "wrc", **WRC_MODEL, "output_solve": False}, {"name": "wrc_multicrop"}),
    "converse2d_paper_network": ({"name": "converse2d", **WRC_MODEL, "output_solve": False},
                                 {"name": "wrc_multicrop"}),
    "lift": ({"name": "lift", "image_channels": 32}, {"name": "lift_multiscale", "jitter": {}}),
    "featup_jbu": ({"name": "featup_jbu"}, MULTIVIEW),
    "resize_conv": ({"name": "resize_conv"}, MULTIVIEW),
    "transposed_conv": ({"name": "transposed_conv"}, MULTIVIEW),
}
TRAINING_FREE: dict[str, dict] = {
    "nearest": {}, "bilinear": {}, "bicubic": {}, "srt": {"max_shift": 3}, "strided": {},
    "featup_implicit": {"num_jitters": 64, "progress": False}, "large_image": {},
}
METRICS = ("cosine", "rel_l2", "cosine_2x", "miou", "boundary_f")
Predict = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]  # (tokens, images, size) -> field


def training_config(model: dict, objective: dict, *, steps: int, image_size: int, batch_size: int, lr: float,
                    seed: int, device: str, run_dir: Path) -> dict[str, Any]:
    """A complete ``wrc.training.train`` config; the backbone and dataset are passed to it directly."""
    return {
        "seed": seed, "device": device, "precision": "fp32", "run_dir": str(run_dir),
        "resume": (run_dir / "checkpoints").is_dir(),
        "train": {"max_steps": steps, "log_every": max(1, steps // 10), "ckpt_every": max(1, steps // 4),
                  "keep_checkpoints": 1, "grad_clip": 1.0},
        "logger": {}, "model": model, "objective": objective, "backbone": {"name": "synthetic_oracle"},
        "data": {"name": "synthetic_scenes", "image_size": image_size, "batch_size": batch_size, "num_workers": 0},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1e-4, "scheduler": "cosine",
                      "warmup_steps": max(1, steps // 10), "min_lr_ratio": 0.01},
    }


@torch.no_grad()
def scene_batches(oracle: OracleBackbone, scenes: SyntheticScenes,
                  batch_size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images, tokens, ground-truth field, class map) per batch of ``scenes``, on the oracle's device."""
    device = next(oracle.buffers()).device
    for start in range(0, len(scenes), batch_size):
        batch = [scenes.scene(i) for i in range(start, min(start + batch_size, len(scenes)))]
        images, labels = torch.stack([s.image for s in batch]).to(device), torch.stack([s.classes for s in batch])
        yield images, oracle(images), oracle.dense(images), labels


def fit_probe(features: torch.Tensor, labels: torch.Tensor, steps: int = 200, seed: int = 0) -> nn.Conv2d:
    """A 1x1-conv linear probe (the JAFAR/WRC protocol) fitted on (N, C, H, W) features, full batch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Conv2d(features.shape[1], len(CLASSES), 1).to(features.device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
    labels = labels.to(features.device)
    for _ in range(steps):
        loss = F.cross_entropy(probe(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe.requires_grad_(False).eval()


@torch.no_grad()
def evaluate(predict: Predict, oracle: OracleBackbone, test: SyntheticScenes, probe_scenes: SyntheticScenes,
             seed: int = 0) -> dict[str, Any]:
    """Every metric of one method: fidelity on the pixel grid and at 2x the token grid (where the field is
    averaged over each cell), probe mIoU and boundary F-score (seconds_per_image times the whole test loop
    per image: oracle, both predictions and probe)."""
    features, labels = zip(*[(predict(tokens, images, field.shape[-2:]).float(), classes)
                             for images, tokens, field, classes in scene_batches(oracle, probe_scenes)], strict=True)
    with torch.enable_grad():
        probe = fit_probe(torch.cat(features), torch.cat(labels), seed=seed)
    confusion, boundaries = ConfusionMatrix(len(CLASSES)), BoundaryFScore(tolerance=2)
    sums = {"cosine": 0.0, "rel_l2": 0.0, "cosine_2x": 0.0}
    cell = oracle.patch_size // 2
    tick = time.perf_counter()
    for images, tokens, field, classes in scene_batches(oracle, test):
        pred = predict(tokens, images, field.shape[-2:]).float()
        sums["cosine"] += F.cosine_similarity(pred, field, dim=1).mean(dim=(1, 2)).sum().item()
        sums["rel_l2"] += ((pred - field).flatten(1).norm(dim=1) / field.flatten(1).norm(dim=1)).sum().item()
        field_2x = F.avg_pool2d(field, cell)
        pred_2x = predict(tokens, images, field_2x.shape[-2:]).float()
        sums["cosine_2x"] += F.cosine_similarity(pred_2x, field_2x, dim=1).mean(dim=(1, 2)).sum().item()
        predicted = probe(pred).argmax(dim=1).cpu()
        confusion.update(predicted, classes)
        boundaries.update(predicted, classes)
    n = len(test)
    segmentation = confusion.compute()
    return {**{key: value / n for key, value in sums.items()}, "miou": segmentation["miou"],
            "pixel_accuracy": segmentation["pixel_accuracy"], "per_class_iou": segmentation["per_class_iou"],
            **boundaries.compute(), "seconds_per_image": (time.perf_counter() - tick) / n}


def train_method(name: str, oracle: OracleBackbone, args: argparse.Namespace) -> tuple[Upsampler, float | None]:
    """Train ``name`` with its own objective (or resume its run); returns (upsampler in eval mode, seconds of
    training in this call, None when the run had already finished)."""
    from wrc.training import train

    model, objective = TRAINED[name]
    run_dir = Path(args.work_dir) / name
    config = training_config(model, objective, steps=args.steps, image_size=args.image_size,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                             run_dir=run_dir)
    last = latest_checkpoint(run_dir / "checkpoints")
    finished = last is not None and last.name == f"step_{args.steps:07d}"
    tick = time.perf_counter()
    result = train(config, backbone=oracle, dataset=SyntheticScenes(args.train_scenes, args.image_size))
    return result.upsampler.eval(), None if finished else time.perf_counter() - tick


def upsampler_for(name: str, oracle: OracleBackbone, args: argparse.Namespace) -> tuple[Upsampler, float | None, str]:
    """(upsampler, training seconds, objective name) for a learned or training-free method."""
    if name in TRAINED:
        upsampler, seconds = train_method(name, oracle, args)
        return upsampler, seconds, TRAINED[name][1]["name"]
    kwargs = dict(TRAINING_FREE[name])
    if name == "featup_implicit":
        kwargs["steps"] = args.implicit_steps
    upsampler = create_upsampler(name, oracle.embed_dim, oracle.patch_size, **kwargs)
    return upsampler.to(args.device).eval(), 0.0, "training-free"


def record(name: str, objective: str, metrics: dict, seconds: float | None, parameters: int, args: argparse.Namespace,
           oracle: OracleBackbone) -> dict[str, Any]:
    model_config = TRAINED[name][0] if name in TRAINED else {}  # learned methods record their whole model config
    return {
        "protocol": "synthetic", "model": {**model_config, "name": name}, "objective": objective, "metrics": metrics,
        "train_seconds": seconds, "parameters": parameters, "backbone": oracle.spec(),
        "setting": {"image_size": args.image_size, "steps": args.steps, "train_scenes": args.train_scenes,
                    "test_scenes": args.test_scenes, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
                    "implicit_steps": args.implicit_steps},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    every = [*TRAINED, *TRAINING_FREE]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=every, choices=every, metavar="NAME",
                        help=f"upsamplers to score (default: all of {', '.join(every)})")
    parser.add_argument("--steps", type=int, default=200, help="training steps of each learned method")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--train-scenes", type=int, default=256)
    parser.add_argument("--test-scenes", type=int, default=32)
    parser.add_argument("--probe-scenes", type=int, default=16, help="training scenes each probe is fitted on")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--implicit-steps", type=int, default=30,
                        help="FeatUp-Implicit fitting steps per image (FeatUp: 1200+, a GPU budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work-dir", default="outputs/synthetic", help="run directories of the learned methods")
    parser.add_argument("--out", default="outputs/synthetic/results", help="result JSONs and the table")
    args = parser.parse_args(argv)
    for option in ("steps", "image_size", "train_scenes", "test_scenes", "probe_scenes", "batch_size"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1; got {getattr(args, option)}")
    if args.image_size % 16:
        parser.error(f"--image-size must be a multiple of 16 (twice the oracle's patch); got {args.image_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    oracle = OracleBackbone().to(args.device)
    test = SyntheticScenes(args.test_scenes, args.image_size, train=False)
    probe_scenes = SyntheticScenes(args.probe_scenes, args.image_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exact = lambda tokens, images, size: F.adaptive_avg_pool2d(oracle.dense(images), size)  # noqa: E731
    ceiling = evaluate(exact, oracle, test, probe_scenes, args.seed)
    ceiling_record = record("ground_truth", "-", ceiling, 0.0, 0, args, oracle)
    (out / "ground_truth.json").write_text(json.dumps(ceiling_record, indent=2))
    for name in args.methods:  # each record is written when done: a killed run keeps the finished methods
        upsampler, seconds, objective = upsampler_for(name, oracle, args)
        predict = lambda tokens, images, size, u=upsampler: u(tokens, images, output_size=size, backbone=oracle)
        metrics = evaluate(predict, oracle, test, probe_scenes, args.seed)
        result = record(name, objective, metrics, seconds, sum(p.numel() for p in upsampler.parameters()), args, oracle)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        log.info("%-16s cosine %.4f  rel_l2 %.4f  mIoU %.4f  boundary F %.4f", name, metrics["cosine"],
                 metrics["rel_l2"], metrics["miou"], metrics["boundary_f"])
    print(write_table(out, environment(torch.device(args.device))))
    return 0


def write_table(out: Path, env: dict[str, str]) -> str:
    """synthetic.md (a header with device, date and command, then the table) and synthetic.csv from every
    record in ``out``; returns the table."""
    markdown, table_csv = build_table(collect([out]), "synthetic", list(METRICS))
    header = "\n".join(f"- {key}: {env[key]}" for key in ("device", "date", "torch", "commit"))
    (out / "synthetic.md").write_text(f"# synthetic\n\n{header}\n- command: `{env['command']}`\n\n{markdown}\n")
    (out / "synthetic.csv").write_text(table_csv)
    return markdown
