"""Fidelity: how close upsampled features come to the backbone's own features of a larger image.

For held-out images x of S x S pixels, the target is F(resize(x, scale * S)), the "large image"
features on a grid ``scale`` times finer; each upsampler maps F(x) to that grid. Reported per
upsampler, averaged over images:
- cosine: mean cosine similarity over positions (1 is perfect),
- rel_l2: ||U(F(x)) - target|| / ||target|| over the whole map (0 is perfect).

    python -m evaluation.eval_fidelity --backbone vit_small_patch14_dinov2.lvd142m \
        --models bilinear outputs/lift_run --root /data/val --num-images 64 --out fidelity.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from wrc.backbone import FrozenBackbone
from wrc.checkpoint import load_upsampler, read_checkpoint_meta
from wrc.data import ImageFolder, SampleImages
from wrc.upsamplers import Upsampler, create_upsampler, list_upsamplers

log = logging.getLogger("wrc")


def load_eval_images(root: str | None, num_images: int, image_size: int) -> torch.Tensor:
    """(N, 3, S, S) centre crops: the first ``num_images`` of ``root``, or held-out generated scenes."""
    if root is None:
        dataset = SampleImages(num_images, image_size, train=False)
    else:
        dataset = ImageFolder(root, image_size, train=False, argument="evaluate.root")
    count = min(num_images, len(dataset))
    return torch.stack([dataset[i]["image"] for i in range(count)])


@torch.no_grad()
def fidelity(
    backbone: FrozenBackbone,
    upsamplers: Mapping[str, Upsampler],
    images: torch.Tensor,
    scale: int = 2,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """Cosine similarity and relative L2 of each upsampler against the large-image target."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1; got {scale}")
    device = next(backbone.buffers()).device
    sums = {name: {"cosine": 0.0, "rel_l2": 0.0, "seconds": 0.0} for name in upsamplers}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        size = (batch.shape[-2] * scale, batch.shape[-1] * scale)
        large = F.interpolate(batch, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        target = backbone(large)  # B, C, scale*h, scale*w
        low = backbone(batch)  # B, C, h, w
        for name, upsampler in upsamplers.items():
            tick = time.perf_counter()
            pred = upsampler(low, batch, output_size=target.shape[-2:], backbone=backbone).float()
            sums[name]["seconds"] += time.perf_counter() - tick
            sums[name]["cosine"] += F.cosine_similarity(pred, target, dim=1).mean(dim=(1, 2)).sum().item()
            error = (pred - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1).clamp_min(1e-12)
            sums[name]["rel_l2"] += error.sum().item()
    n = len(images)
    return {name: {"cosine": s["cosine"] / n, "rel_l2": s["rel_l2"] / n, "seconds_per_image": s["seconds"] / n}
            for name, s in sums.items()}


def build_upsamplers(specs: list[str], backbone: FrozenBackbone) -> dict[str, Upsampler]:
    """Each spec is a registered training-free name (``bilinear``) or a checkpoint / run directory."""
    device = next(backbone.buffers()).device
    upsamplers: dict[str, Upsampler] = {}
    for spec in specs:
        if spec in list_upsamplers():
            upsampler = create_upsampler(spec, backbone.embed_dim, backbone.patch_size)
            upsamplers[spec] = upsampler.to(device).eval()
            continue
        meta = read_checkpoint_meta(spec)
        if meta["in_channels"] != backbone.embed_dim:
            raise ValueError(
                f"checkpoint {spec!r} was trained on {meta['in_channels']}-channel features "
                f"({meta.get('backbone', {}).get('name')}) but --backbone {backbone.name} has {backbone.embed_dim}"
            )
        upsamplers[f"{meta['name']}"] = load_upsampler(spec, device).eval()
    return upsamplers


def write_result(path: str | Path, backbone: FrozenBackbone, results: dict, *, scale: int, image_size: int,
                 num_images: int, source: str) -> Path:
    """One JSON per evaluation (protocol, backbone, resolution, metrics, timestamp)."""
    record = {
        "protocol": "fidelity", "backbone": backbone.spec(), "scale": scale, "image_size": image_size,
        "num_images": num_images, "images": source, "results": results,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True, help="timm model name")
    parser.add_argument("--weights", default="pretrained", help="pretrained | random | /path/to/checkpoint")
    parser.add_argument("--layer", type=int, default=-1)
    parser.add_argument("--facet", default="token")
    parser.add_argument("--models", nargs="+", default=["bilinear"],
                        help="registered names (bilinear, bicubic, ...) and/or checkpoint or run directories")
    parser.add_argument("--root", default=None, help="folder of held-out images (default: generated scenes)")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="fidelity.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    backbone = FrozenBackbone(args.backbone, args.weights, layer=args.layer, facet=args.facet).to(args.device)
    upsamplers = build_upsamplers(args.models, backbone)
    images = load_eval_images(args.root, args.num_images, args.image_size)
    results = fidelity(backbone, upsamplers, images, args.scale)
    path = write_result(args.out, backbone, results, scale=args.scale, image_size=args.image_size,
                        num_images=len(images), source=args.root or "built-in held-out scenes")
    for name, metrics in results.items():
        log.info("%-12s cosine %.4f  rel_l2 %.4f", name, metrics["cosine"], metrics["rel_l2"])
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
