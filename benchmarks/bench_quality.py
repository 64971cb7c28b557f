"""Quality at equal training budget: fidelity of upsamplers trained with the same data, steps and seed.

    python -m benchmarks.bench_quality [--steps 300] [--device cpu] [--num-images 16] [--image-size 224] [--limit N]

Starts from the quickstart configuration (benchmarks/configs/quickstart.json: test_vit backbone,
generated scenes, 224 px, wrc_multicrop) and changes one thing per row: the upsampling layer (WRC,
Converse2D, transposed conv), the project's improvements over the original network (output_solve
off = the paper's network, whose solve only lifts inner features; feature_skip off = the original's
re-prediction of every feature), and the exact weighted solve of a k = 4 kernel against its one-step
approximation (iterations=0). Fidelity is measured on held-out scenes
against the backbone on the 2x larger image (the fidelity protocol, evaluation/protocols/fidelity.py).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import publish
from benchmarks.quickstart import QUICKSTART, train_variant
from evaluation.protocols.fidelity import fidelity, load_eval_images
from wrc.extractor import DenseFeatureExtractor, build_extractor

WRC = QUICKSTART["model"]
CONVERSE2D = {"name": "converse2d", "image_channels": 32, "feature_skip": True, "output_solve": True}
VARIANTS: dict[str, dict] = {
    "wrc (k=2, exact block solve, output solve)": {"model": WRC},
    "converse2d (scalar weights, output solve)": {"model": CONVERSE2D},
    "wrc_tconv (transposed conv)": {"model": {"name": "wrc_tconv", "image_channels": 32, "feature_skip": True}},
    "wrc, output_solve=false (the paper's network)": {"model": {**WRC, "output_solve": False}},
    "converse2d, output_solve=false": {"model": {**CONVERSE2D, "output_solve": False}},
    "wrc, feature_skip=false (original re-prediction)": {"model": {**WRC, "feature_skip": False}},
    "wrc k=4, exact (PCG, tol 1e-4)": {"model": {**WRC, "kernel_size": 4, "iterations": 20, "tol": 1.0e-4}},
    "wrc k=4, iterations=0 (one-step approximation)": {"model": {**WRC, "kernel_size": 4, "iterations": 0}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=QUICKSTART["train"]["max_steps"])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=QUICKSTART["data"]["image_size"])
    parser.add_argument("--limit", type=int, default=None, help="only the first N variants (a smoke run)")
    args = parser.parse_args()
    images = load_eval_images(None, args.num_images, args.image_size)
    rows = {}
    backbone = None
    for name, overrides in list(VARIANTS.items())[: args.limit]:
        backbone, upsampler, seconds = train_variant(overrides, args.steps, args.device, args.image_size)
        scores = fidelity(DenseFeatureExtractor(backbone, upsampler), images, scale=2)
        rows[name] = {**scores, "train_seconds": seconds,
                      "parameters": sum(p.numel() for p in upsampler.parameters())}
        print(name, rows[name], flush=True)
    bilinear = build_extractor(backbone, "bilinear")
    rows = {"bilinear (no training)": {**fidelity(bilinear, images, 2),
                                       "train_seconds": 0.0, "parameters": 0}, **rows}
    lines = [f"Quickstart setting (test_vit, generated scenes, {args.image_size} px, wrc_multicrop), {args.steps} "
             "steps each, "
             f"same seed; fidelity on {len(images)} held-out scenes against the backbone at 2x.", "",
             "| upsampler | cosine (higher is better) | relative L2 (lower is better) | parameters |",
             "| --- | ---: | ---: | ---: |"]
    for name, r in rows.items():  # training seconds stay in the JSON: speed is bench_training's job
        lines.append(f"| {name} | {r['cosine']:.4f} | {r['rel_l2']:.4f} | {r['parameters']:,} |")
    device = torch.device(args.device)
    publish(f"quality_{device.type}", device, rows, lines, steps=args.steps, image_size=args.image_size)


if __name__ == "__main__":
    main()
