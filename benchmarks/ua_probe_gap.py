"""Why Upsample Anything's probe trails bilinear in the synthetic benchmark although its field cosine is level.

    python -m benchmarks.ua_probe_gap [--scenes 4] [--image-size 128] [--name synthetic/ua_probe_gap]

The scenes' class is their luminance texture (flat, stripes, plaid) and the true field has no luminance term, so
an upsampler's output should not change between the bright and the dark stripes of one region. Upsample Anything's
range kernel weighs each token by the distance between the output pixel's colour and the token's downsampled
colour: a bright-stripe pixel draws on bright tokens, a dark one on dark tokens, and the output may follow the
texture. Measured on the benchmark's held-out scenes, per method (Upsample Anything, bilinear, the true field):
- texture split: per textured region's interior (3 px from its edge), the distance between the mean output over
  its brighter and its darker half of pixels, over the mean norm of the true field there (0 for the field);
- interior and edge error: the mean per-pixel distance to the true field over its mean norm, inside textured
  regions and within 2 px of a region edge (the edge band is where image guidance should win).
A split that tracks the texture is a class cue the linear probe reads as noise: spurious class edges inside
regions, which is the boundary precision the field task reports.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import publish
from evaluation.synthetic.benchmark import scene_size
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.scenes import CLASSES, Scene, SyntheticScenes
from wrc.arguments import positive_int
from wrc.upsamplers import create_upsampler

METHODS = ("upsample_anything", "bilinear")
INTERIOR, EDGE = 3, 2  # px from a region edge: the texture split's interior, the edge band's half width
MIN_PIXELS = 100  # interior pixels a region needs for its split to count


def distance_to_edge_at_least(regions: torch.Tensor, margin: int) -> torch.Tensor:
    """(H, W) bool: pixels whose (2 margin + 1)^2 neighbourhood lies in their own region."""
    padded = F.pad(regions[None, None].float(), (margin,) * 4, mode="replicate")
    window = 2 * margin + 1
    high = F.max_pool2d(padded, window, 1)[0, 0]
    low = -F.max_pool2d(-padded, window, 1)[0, 0]
    return high == low


def texture_split(field: torch.Tensor, luminance: torch.Tensor, inside: torch.Tensor, scale: float) -> float:
    """|mean of ``field`` (C, H, W) over the brighter half of ``inside`` - mean over the darker half| / scale."""
    median = luminance[inside].median()
    bright, dark = inside & (luminance > median), inside & (luminance <= median)
    return float((field[:, bright].mean(1) - field[:, dark].mean(1)).norm() / scale)


def relative_error(field: torch.Tensor, truth: torch.Tensor, where: torch.Tensor) -> float:
    return float((field[:, where] - truth[:, where]).norm(dim=0).mean() / truth[:, where].norm(dim=0).mean())


def measure_scene(scene: Scene, outputs: dict[str, torch.Tensor], truth: torch.Tensor) -> dict[str, dict]:
    """Per method: texture splits of the scene's textured regions, interior and edge errors (sums and counts)."""
    luminance = scene.image.mean(0)
    interior = distance_to_edge_at_least(scene.regions, INTERIOR)
    edge_band = ~distance_to_edge_at_least(scene.regions, EDGE)
    textured = scene.classes != CLASSES.index("flat")
    found = {name: {"splits": [], "interior": relative_error(field, truth, textured & interior),
                    "edge": relative_error(field, truth, edge_band)} for name, field in outputs.items()}
    for region in scene.regions.unique():
        inside = (scene.regions == region) & interior & textured
        if inside.sum() < MIN_PIXELS:
            continue
        scale = float(truth[:, inside].norm(dim=0).mean())
        for name, field in outputs.items():
            found[name]["splits"].append(texture_split(field, luminance, inside, scale))
    return found


def measure(num_scenes: int, image_size: int) -> dict[str, dict[str, float]]:
    oracle = OracleBackbone()
    upsamplers = {name: create_upsampler(name, oracle.embed_dim, oracle.patch_size) for name in METHODS}
    scenes = SyntheticScenes(num_scenes, image_size, train=False)
    per_scene = []
    for index in range(num_scenes):
        scene = scenes.scene(index)
        image, size = scene.image[None], (image_size, image_size)
        tokens, truth = oracle(image), oracle.dense(image)[0]
        with torch.no_grad():
            outputs = {name: up(tokens, image, output_size=size)[0] for name, up in upsamplers.items()}
        per_scene.append(measure_scene(scene, {**outputs, "ground_truth": truth}, truth))
        print(f"scene {index + 1}/{num_scenes}: " + "  ".join(
            f"{name} split {sum(r['splits']) / max(1, len(r['splits'])):.3f}" for name, r in per_scene[-1].items()),
            flush=True)
    results = {}
    for name in (*METHODS, "ground_truth"):
        splits = [s for scene in per_scene for s in scene[name]["splits"]]
        results[name] = {"texture_split": sum(splits) / len(splits) if splits else None, "regions": len(splits),
                         "interior_error": sum(s[name]["interior"] for s in per_scene) / len(per_scene),
                         "edge_error": sum(s[name]["edge"] for s in per_scene) / len(per_scene)}
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=positive_int, default=4, help="held-out scenes (~8 s each at 128 px)")
    parser.add_argument("--image-size", type=scene_size, default=128)
    parser.add_argument("--name", default="synthetic/ua_probe_gap", help="results name under benchmarks/results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    results = measure(args.scenes, args.image_size)
    lines = [f"{args.scenes} held-out scenes of {args.image_size} px (the benchmark's first test scenes), one thread. "
             "Texture split: |mean output over the bright half - over the dark half| of each textured region's "
             f"interior ({INTERIOR} px from its edge), over the true field's mean norm there; errors: mean distance "
             f"to the true field over its mean norm, inside textured regions and within {EDGE} px of an edge.", "",
             "| method | texture split ↓ | interior error ↓ | edge error ↓ | regions |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        split = "-" if r["texture_split"] is None else f"{r['texture_split']:.4f}"
        lines.append(f"| {name} | {split} | {r['interior_error']:.4f} | {r['edge_error']:.4f} | {r['regions']} |")
    setting = {"scenes": args.scenes, "image_size": args.image_size, "interior_px": INTERIOR, "edge_px": EDGE}
    publish(args.name, torch.device("cpu"), results, lines, setting=setting)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
