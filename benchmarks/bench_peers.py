"""Every upsampler at quickstart size: fidelity on held-out scenes and one comparison figure.

    python -m benchmarks.bench_peers [--steps 300] [--image-size 224] [--device cpu] [--implicit-steps 150]
        [--methods wrc lift bilinear ...]

The quickstart setting (benchmarks/configs/quickstart.json: test_vit with random weights, generated
scenes, batch 8; 224 px unless --image-size says otherwise: FeatUp's objective works on the pixel
grid, several seconds per step at 224 on two CPU cores). Each learned method is trained by its own
objective for the same number of steps and seed: WRC (wrc_multicrop), LiFT (lift_multiscale),
FeatUp-JBU, resize-conv and transposed conv (featup_multiview, as FeatUp trained its baselines), and
today's attention upsamplers (JAFAR jafar_lowres, AnyUp anyup_crops, NAF naf_downscale, UPLiFT
uplift_multidepth, LoftUp loftup_stage1).
Training-free methods run as they are: bilinear, SRT (49 views), strided, Upsample Anything, FeatUp-Implicit (a short
per-image fit: the full 1200 steps take minutes per image on a CPU), and "large image", which at 2x
is exactly the fidelity target (an upper bound, not a competitor). Fidelity
(the fidelity protocol, evaluation/protocols/fidelity.py) is measured against the backbone on the 2x larger image.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import common
from benchmarks.common import publish
from benchmarks.quickstart import QUICKSTART, train_variant
from evaluation.protocols.fidelity import fidelity, load_eval_images
from evaluation.report import figure_rows
from utils.visualization import save_figure
from wrc.extractor import DenseFeatureExtractor, build_extractor

QUICKSTART_PATCH = 16  # the test ViT's
MULTIVIEW = {"name": "featup_multiview", "num_jitters": 5, "max_pad": 20, "max_zoom": 2.0}
LEARNED = {  # name: (model config, objective config)
    "wrc": (QUICKSTART["model"], QUICKSTART["objective"]),
    "lift": ({"name": "lift", "image_channels": 32}, {"name": "lift_multiscale", "jitter": {}}),
    "featup_jbu": ({"name": "featup_jbu"}, MULTIVIEW),
    "resize_conv": ({"name": "resize_conv"}, MULTIVIEW),
    "transposed_conv": ({"name": "transposed_conv"}, MULTIVIEW),
    # today's attention upsamplers, each with its own objective (NAF's window: naf_kernel below)
    "jafar": ({"name": "jafar"}, {"name": "jafar_lowres"}),
    "anyup": ({"name": "anyup"}, {"name": "anyup_crops"}),
    "naf": ({"name": "naf"}, {"name": "naf_downscale"}),
    "uplift": ({"name": "uplift"}, {"name": "uplift_multidepth"}),
    "loftup": ({"name": "loftup"}, {"name": "loftup_stage1"}),
}
FREE = {  # training-free: name -> settings (featup_implicit's steps come from --implicit-steps)
    "bilinear": {}, "srt": {"max_shift": 3}, "strided": {},
    "featup_implicit": {"num_jitters": 128, "progress": False}, "large_image": {}, "upsample_anything": {},
}


def naf_kernel(image_size: int, patch_size: int) -> int:
    """NAF's window (9 x 9 tokens in the paper) shrunk to the largest odd size its training input has: it trains at
    2x from the half-size image, 4 x 4 tokens of the 16-px test ViT at 128 px."""
    tokens = image_size // 2 // patch_size
    return max(1, min(9, tokens if tokens % 2 else tokens - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=QUICKSTART["train"]["max_steps"])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--implicit-steps", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=QUICKSTART["data"]["image_size"])
    parser.add_argument("--methods", nargs="+", choices=[*LEARNED, *FREE], default=[*LEARNED, *FREE],
                        help="a subset of the upsamplers (default: all; the first learned one's backbone is shared)")
    args = parser.parse_args()
    if not any(name in LEARNED for name in args.methods):
        raise SystemExit("--methods needs at least one learned method (its training run provides the backbone)")
    images = load_eval_images(None, args.num_images, args.image_size)
    extractors, seconds = {}, {}
    backbone = None
    for name, (model, objective) in ((n, LEARNED[n]) for n in LEARNED if n in args.methods):
        if name == "naf":
            model = {**model, "kernel": naf_kernel(args.image_size, QUICKSTART_PATCH)}
        backbone, upsampler, seconds[name] = train_variant({"model": model, "objective": objective},
                                                           args.steps, args.device, args.image_size)
        extractors[name] = DenseFeatureExtractor(backbone, upsampler)
        print(f"trained {name} in {seconds[name]:.0f} s", flush=True)
    for name, kwargs in FREE.items():
        if name in args.methods:
            kwargs = {**kwargs, "steps": args.implicit_steps} if name == "featup_implicit" else kwargs
            extractors[name] = build_extractor(backbone, {"name": name, **kwargs})
    rows = {name: {**fidelity(extractor, images, scale=2), "train_seconds": seconds.get(name, 0.0),
                   "parameters": sum(q.numel() for q in extractor.upsampler.parameters())}
            for name, extractor in extractors.items()}
    notes = {"large_image": " (= the target at 2x: upper bound)",
             "featup_implicit": f" ({args.implicit_steps} fitting steps per image)",
             "naf": f" ({naf_kernel(args.image_size, QUICKSTART_PATCH)}-token window)"}
    lines = [f"Quickstart setting (test_vit with random weights, generated scenes, {args.image_size} px), learned "
             "methods trained "
             f"{args.steps} steps each with their own objective, same seed; fidelity on {len(images)} held-out "
             "scenes against the backbone at 2x.", "",
             "| upsampler | objective | cosine (higher is better) | relative L2 (lower is better) | parameters |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, r in sorted(rows.items(), key=lambda item: -item[1]["cosine"]):
        objective = LEARNED[name][1]["name"] if name in LEARNED else "training-free"
        lines.append(f"| {name}{notes.get(name, '')} | {objective} | {r['cosine']:.4f} | {r['rel_l2']:.4f} | "
                     f"{r['parameters']:,} |")
    device = torch.device(args.device)
    figure = common.RESULTS_DIR / f"peers_{device.type}.png"
    save_figure(figure_rows(extractors, images[:3], 2), figure)
    lines += ["", f"Figure: `{figure.name}` (PCA of the features and the similarity to one query point, per method)."]
    publish(f"peers_{device.type}", device, rows, lines, steps=args.steps, image_size=args.image_size)


if __name__ == "__main__":
    main()
