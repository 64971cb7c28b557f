"""FeatUp-Implicit: seconds to fit one image at 224 and 448.

    python -m benchmarks.bench_implicit [--device cuda] [--steps 20] [--sizes 224 448] [--num-jitters N]

A full fit (1200 steps by default) takes minutes on a CPU, so the benchmark runs one fit with the
default settings but ``--steps`` optimisation steps, and reports its two parts as the fit itself
records them: the jitter bank and PCA (``num_jitters`` backbone passes), and the steps, scaled to the
configured step count (every step does the same work). Random ViT-S/14 weights: the cost does not
depend on them. --num-jitters replaces the default bank size (a smoke run).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import publish
from wrc import create_upsampler
from wrc.backbone import FrozenBackbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--steps", type=int, default=10, help="steps actually timed per size")
    parser.add_argument("--num-jitters", type=int, default=None, help="jittered views per image (default: the fit's)")
    args = parser.parse_args()
    bank = {"num_jitters": args.num_jitters} if args.num_jitters else {}
    device = torch.device(args.device)
    backbone = FrozenBackbone(args.backbone, "random").to(device)
    rows = []
    for size in args.sizes:
        image = torch.rand(1, 3, size, size, device=device)
        features = backbone(image)
        up = create_upsampler("featup_implicit", backbone.embed_dim, backbone.patch_size, steps=args.steps,
                              progress=False, **bank)
        configured = create_upsampler("featup_implicit", backbone.embed_dim, backbone.patch_size, **bank).settings
        seconds = up.fit(features, image, backbone).seconds
        per_step = seconds["steps"] / args.steps
        row = {"size": size, "num_jitters": configured["num_jitters"], "bank_seconds": seconds["views"],
               "seconds_per_step": per_step, "configured_steps": configured["steps"],
               "seconds_per_image": seconds["views"] + per_step * configured["steps"]}
        print(row, flush=True)
        rows.append(row)
    lines = [f"{args.backbone} (random weights), default settings ({rows[0]['num_jitters']} jittered views, "
             f"{rows[0]['configured_steps']} steps); per-step time measured over {args.steps} steps.", "",
             "| image | jitter bank + PCA s | s per step | s per image (bank + steps) |",
             "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['size']} | {r['bank_seconds']:.1f} | {r['seconds_per_step']:.3f} | {r['seconds_per_image']:.0f} |"
              for r in rows]
    publish(f"implicit_{device.type}", device, rows, lines)


if __name__ == "__main__":
    main()
