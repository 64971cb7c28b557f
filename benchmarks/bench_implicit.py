"""FeatUp-Implicit: seconds to fit one image at 224 and 448.

    python -m benchmarks.bench_implicit [--device cuda] [--steps 20]

A full fit (1200 steps by default) takes minutes on a CPU, so the benchmark times the parts of a fit
separately and reports the per-image total they add up to: the jitter bank (``num_jitters`` backbone
passes, timed whole), and ``--steps`` optimisation steps (timed, then scaled to the configured step
count, since every step does the same work). Random ViT-S/14 weights: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import publish, synchronize
from wrc import create_upsampler
from wrc.backbone import FrozenBackbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--steps", type=int, default=20, help="steps actually timed per size")
    args = parser.parse_args()
    device = torch.device(args.device)
    backbone = FrozenBackbone(args.backbone, "random").to(device)
    rows = []
    for size in args.sizes:
        image = torch.rand(1, 3, size, size, device=device)
        features = backbone(image)
        full = create_upsampler("featup_implicit", backbone.embed_dim, backbone.patch_size, progress=False)
        configured_steps, num_jitters = full.settings["steps"], full.settings["num_jitters"]
        # the jitter bank and PCA alone (1 step), then `steps` steps: the difference is the per-step cost
        timings = {}
        for steps in (1, args.steps + 1):
            up = create_upsampler("featup_implicit", backbone.embed_dim, backbone.patch_size, steps=steps,
                                  progress=False)
            synchronize(device)
            start = time.perf_counter()
            up.fit(features, image, backbone)
            synchronize(device)
            timings[steps] = time.perf_counter() - start
        per_step = (timings[args.steps + 1] - timings[1]) / args.steps
        bank = timings[1] - per_step
        row = {"size": size, "num_jitters": num_jitters, "bank_seconds": bank, "seconds_per_step": per_step,
               "configured_steps": configured_steps, "seconds_per_image": bank + per_step * configured_steps}
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
