"""SRT: time per image against the number of views, and the aggregation overhead over the backbone.

    python -m benchmarks.bench_srt [--device cuda] [--backbone vit_small_patch14_dinov2] [--size 224]

For n views (random subsets of the 7 x 7 shifts, d = 3) SRT's time per image is compared with the
backbone alone on the same n shifted images in the same batches: the difference is SRT's own cost
(shifting, aggregating, forming the pixel-level field), which should stay under 10 % of the backbone
time, and the total should grow linearly in n (the fitted exponent is reported). Random weights: the
cost does not depend on them.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import loglog_slope, publish, time_call
from wrc import create_upsampler
from wrc.backbone import FrozenBackbone
from wrc.upsamplers.srt import shift_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 5, 10, 25, 49])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls; the fastest is reported (least noise)")
    args = parser.parse_args()
    device = torch.device(args.device)
    backbone = FrozenBackbone(args.backbone, "random").to(device)
    image = torch.rand(1, 3, args.size, args.size, device=device)
    features = backbone(image)
    rows = []
    for views in args.views:
        srt = create_upsampler("srt", backbone.embed_dim, backbone.patch_size, max_shift=3, num_views=views,
                               batch_size=args.batch_size)
        shifted = [shift_image(image, dy, dx, srt.padding_mode) for dy, dx in srt.shifts()[1:]]

        def backbone_only(shifted=shifted):
            for start in range(0, len(shifted), args.batch_size):
                backbone(torch.cat(shifted[start : start + args.batch_size]))

        with torch.no_grad():
            srt_ms = time_call(lambda srt=srt: srt(features, image, backbone=backbone), device, warmup=1,
                               repeat=args.repeat)["min_ms"]
            backbone_ms = time_call(backbone_only, device, warmup=1, repeat=args.repeat)["min_ms"] if shifted else 0
        row = {"views": views, "srt_ms": srt_ms, "backbone_ms": backbone_ms,
               "overhead_ms": srt_ms - backbone_ms,
               "overhead_of_backbone": (srt_ms - backbone_ms) / backbone_ms if backbone_ms else None}
        print(row, flush=True)
        rows.append(row)
    exponent = loglog_slope([r["views"] for r in rows if r["views"] > 1], [r["srt_ms"] for r in rows if r["views"] > 1])
    lines = [f"{args.backbone} (random weights), {args.size}x{args.size}, 1 image, max_shift 3, views batched "
             f"{args.batch_size} per backbone call, output at pixel resolution. The unshifted view reuses the "
             f"given features, so n views cost n - 1 backbone passes. Fastest of {args.repeat} calls.", "",
             "| views | SRT ms | backbone ms (same shifted images) | SRT's own ms | share of backbone time |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        share = f"{100 * r['overhead_of_backbone']:.1f} %" if r["overhead_of_backbone"] is not None else "-"
        lines.append(f"| {r['views']} | {r['srt_ms']:.1f} | {r['backbone_ms']:.1f} | {r['overhead_ms']:.1f} "
                     f"| {share} |")
    lines += ["", f"Growth of SRT time with views (log-log slope over n > 1): {exponent:.2f} (1 = linear).", "",
              "SRT's own cost is mostly fixed: forming the pixel-level field once (one matrix product over the row "
              "shifts in use); per view it only adds a token-sized product, so its share of the time falls as views "
              "are added."]
    publish(f"srt_{device.type}", device, {"rows": rows, "time_exponent_vs_views": exponent}, lines)


if __name__ == "__main__":
    main()
