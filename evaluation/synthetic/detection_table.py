"""The ground-truth detection table: ViTDet's Mask R-CNN on generated scenes, one pyramid per row, box and mask AP.

    python -m evaluation.synthetic.detection_table --out benchmarks/results/synthetic/detection   # the committed one
    python -m evaluation.synthetic.detection_table --variants tconv bilinear --steps 50 --out /tmp/det

Setting: the ``detection`` protocol's generated scenes (evaluation/synthetic/detection.py: 128-px scenes in the
COCO layout, 2-4 objects whose category is their texture, flat distractors) on the oracle backbone with patch 16
(8 x 8 tokens, the pyramid's stride-16 map). Every row trains the same small detector (the protocol's, without a
pretrained head: backbone frozen, the pyramid's projections, the RPN and the ROI heads learn) for the same steps,
seed, batch and optimiser, then scores the val split with pycocotools. The rows differ only in p3 / p2:

- ``tconv``: ViTDet's transposed convolutions, trained with the detector (the baseline);
- ``bilinear``: the tokens resized 2x / 4x;
- ``lift``, ``wrc`` (any method of the synthetic benchmark's TRAINED): the upsampler first trained on the
  synthetic benchmark's scenes by its recipe (its own objective, the same steps, batch and optimiser,
  evaluation/synthetic/benchmark.py) on this oracle (patch 16), then frozen in the detector (LiFT's step 3);
- ``ground_truth``: the oracle's own field averaged to the level's grid (a perfect upsampler), the ceiling.

Run directories (``--work-dir``) keep every checkpoint: a killed table rerun with the same command resumes
(upsamplers and detectors continue, finished rows are read back). Records: ``--out/<variant>.json`` (the
protocol's result record) and ``--out/detection.md`` (device, date, commit, command, setting and the table).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch

from evaluation.detection.model import TCONV
from evaluation.protocol import evaluate
from evaluation.protocols.synthetic import GroundTruth
from evaluation.records import read_record
from evaluation.synthetic.benchmark import TRAINED, training_config
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.scenes import SyntheticScenes
from wrc.arguments import positive_int
from wrc.checkpoint import atomic_write_text
from wrc.extractor import DenseFeatureExtractor
from wrc.provenance import environment
from wrc.upsamplers import Upsampler, create_upsampler

log = logging.getLogger("wrc")

DEFAULT_VARIANTS = ("ground_truth", "tconv", "bilinear", "lift", "wrc")
TRAINING_FREE = ("ground_truth", "bilinear", "bicubic", "nearest")
DETECTOR_MODEL = {"out_channels": 64, "representation_size": 256, "anchor_sizes": [16, 32, 64, 128, 256],
                  "rois_per_image": 64, "proposals_per_image": 300}  # the protocol's model.* for 128-px scenes
COLUMNS = ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75")


def oracle() -> OracleBackbone:
    """The detector's oracle: patch 16, so its tokens are the pyramid's stride-16 map (train.oracle_backbone)."""
    return OracleBackbone(patch_size=16)


def recipe(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """How ``variant``'s p3 / p2 are made (the record's ``training``, less the seconds)."""
    if variant not in TRAINED:
        return {"objective": {"ground_truth": "-", TCONV: "trained with the detector"}.get(variant, "training-free")}
    model, objective = TRAINED[variant]
    return {"objective": objective["name"], "model": model, "steps": args.upsampler_steps,
            "image_size": args.upsampler_image_size, "batch_size": args.upsampler_batch_size, "lr": args.upsampler_lr,
            "train_scenes": args.train_scenes, "seed": args.seed}


def pyramid_upsampler(variant: str, backbone: OracleBackbone, args: argparse.Namespace) -> tuple[Upsampler, float]:
    """(the upsampler giving p3 / p2, seconds spent training it here); tconv's extractor carries bilinear, which its
    detector never calls."""
    if variant == "ground_truth":
        return GroundTruth(backbone.embed_dim, backbone.patch_size).eval(), 0.0
    if variant not in TRAINED:
        name = "bilinear" if variant == TCONV else variant
        return create_upsampler(name, backbone.embed_dim, backbone.patch_size).eval(), 0.0
    from wrc.training import train

    model, objective = TRAINED[variant]
    config = training_config(model, objective, steps=args.upsampler_steps, image_size=args.upsampler_image_size,
                             batch_size=args.upsampler_batch_size, lr=args.upsampler_lr, seed=args.seed,
                             device=args.device, run_dir=Path(args.work_dir) / f"upsampler_{variant}")
    tick = time.perf_counter()
    result = train(config, backbone=backbone, dataset=SyntheticScenes(args.train_scenes, args.upsampler_image_size))
    upsampler = result.upsampler.eval()
    upsampler.source = {"checkpoint": str(result.checkpoint), "step": result.step}  # as load_upsampler says it
    return upsampler, round(time.perf_counter() - tick, 1)


def protocol_settings(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """The detection protocol's settings of one row: the same for every variant but the pyramid."""
    return {"dataset": "synthetic", "pyramid": TCONV if variant == TCONV else "upsampler", "heads": args.heads,
            "image_size": args.size, "train_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "model": dict(DETECTOR_MODEL), "eval_batch_size": 8, "synthetic_train_images": args.train_images,
            "synthetic_val_images": args.val_images, "synthetic_size": args.size, "seed": args.seed}


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train and score one row, or read back its record when it finished with the same settings."""
    out = Path(args.out) / f"{variant}.json"
    settings, how = protocol_settings(variant, args), recipe(variant, args)
    if out.is_file():
        record = read_record(out)
        done = {k: v for k, v in record.training.items() if k != "train_seconds"}
        if record.config == {**record.config, **settings} and done == how:
            return record.to_dict()
    backbone = oracle().to(args.device)
    upsampler, seconds = pyramid_upsampler(variant, backbone, args)
    record = evaluate("detection", DenseFeatureExtractor(backbone, upsampler.to(args.device)), settings,
                      Path(args.work_dir) / variant, record_path=out, label=variant,
                      training={**how, "train_seconds": seconds})
    log.info("%-12s box AP %.4f  mask AP %.4f  (%.0f s)", variant, record.metrics["box_ap"],
             record.metrics["mask_ap"], record.seconds)
    return record.to_dict()


def markdown(records: list[dict[str, Any]], args: argparse.Namespace, env: dict[str, Any]) -> str:
    lines = [f"# detection (synthetic)\n\n- device: {env['device']}\n- date: {env['date']}\n- torch: {env['torch']}\n"
             f"- commit: {env['commit']}\n- command: `{env['command']}`\n",
             "| pyramid (p3 / p2) | " + " | ".join(COLUMNS) + " | detector s | upsampler s |",
             "| --- | " + " | ".join("---:" for _ in COLUMNS) + " | ---: | ---: |"]
    for r in sorted(records, key=lambda r: -r["metrics"]["box_ap"]):
        values = " | ".join(f"{100 * r['metrics'][c]:.1f}" for c in COLUMNS)
        lines.append(f"| {r['upsampler'].get('label', r['upsampler']['name'])} | {values} | {r['seconds']:.0f} | "
                     f"{r['training'].get('train_seconds', 0):.0f} |")
    lines += ["", setting_text(args)]
    return "\n".join(lines) + "\n"


def setting_text(args: argparse.Namespace) -> str:
    grid = args.size // 16
    parts = [
        f"Setting: generated {args.size}-px scenes in the COCO layout ({args.train_images} train, {args.val_images} "
        "val; 2-4 objects whose 3 categories are textures, flat distractors), the oracle backbone with patch 16 "
        f"({grid} x {grid} tokens = p4). Every row trains the same Mask R-CNN ({args.heads} heads, "
        f"{DETECTOR_MODEL['out_channels']} channels, the oracle frozen) for {args.steps} steps, batch "
        f"{args.batch_size}, AdamW {args.lr:g} (ViTDet's warm-up and steps), LSJ 0.8-1.25, seed {args.seed}, and "
        "scores the val split (pycocotools box and mask AP, %). Only p3 / p2 differ. tconv: ViTDet's transposed "
        "convolutions, trained with the detector; ground_truth: the oracle's field averaged to each level's grid "
        "(the ceiling); learned upsamplers: trained first by the synthetic benchmark's recipe "
        f"({args.upsampler_steps} steps of their own objective, batch {args.upsampler_batch_size}, AdamW "
        f"{args.upsampler_lr:g} with cosine decay, {args.train_scenes} scenes of {args.upsampler_image_size} px) on "
        "the same oracle, then frozen in the detector (LiFT's step 3).",
        "\"detector s\": generating the data, training and scoring the detector; \"upsampler s\": training the "
        "upsampler first (0: none).",
    ]
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    choices = [*TRAINING_FREE, TCONV, *TRAINED]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=choices, metavar="NAME",
                        help=f"pyramids to compare (default {' '.join(DEFAULT_VARIANTS)}; any of {', '.join(choices)})")
    parser.add_argument("--steps", type=positive_int, default=200, help="detector training steps of every row")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--heads", default="torchvision", choices=("torchvision", "vitdet"))
    parser.add_argument("--size", type=int, default=128, help="scene side in pixels (a multiple of 64)")
    parser.add_argument("--train-images", type=positive_int, default=256)
    parser.add_argument("--val-images", type=positive_int, default=64)
    parser.add_argument("--upsampler-steps", type=positive_int, default=200)
    parser.add_argument("--upsampler-image-size", type=int, default=128)
    parser.add_argument("--upsampler-batch-size", type=positive_int, default=8)
    parser.add_argument("--upsampler-lr", type=float, default=2e-3)
    parser.add_argument("--train-scenes", type=positive_int, default=256,
                        help="synthetic benchmark scenes for upsamplers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", default="outputs/synthetic_detection", help="run directories")
    parser.add_argument("--out", default="outputs/synthetic_detection/results", help="records and the table")
    args = parser.parse_args(argv)
    if args.size % 64 or args.upsampler_image_size % 32:
        parser.error(f"--size must be a multiple of 64 (the detector's padding) and --upsampler-image-size of 32 "
                     f"(the objectives' x/2 views on patch 16); got {args.size} and {args.upsampler_image_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = [run_variant(variant, args) for variant in args.variants]  # each record written when done
    table = markdown(records, args, environment(torch.device(args.device)))
    atomic_write_text(out / "detection.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
