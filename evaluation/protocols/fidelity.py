"""Fidelity: how close upsampled features come to the backbone's own features of a larger image.

For held-out images x of S x S pixels, the target is F(resize(x, scale * S)), the "large image"
features on a grid ``scale`` times finer; the upsampler maps F(x) to that grid. Averaged over images:
- cosine: mean cosine similarity over positions (1 is perfect),
- rel_l2: ||U(F(x)) - target|| / ||target|| over the whole map (0 is perfect).

    python -m evaluation protocol=fidelity backbone=dinov2_vits14 model=bilinear protocol.root=/data/val
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from evaluation.metrics import cosine_per_image, relative_l2_per_image
from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol
from wrc.data import ImageFolder, SampleImages
from wrc.extractor import DenseFeatureExtractor
from wrc.settings import require_at_least_one

log = logging.getLogger("wrc")


@dataclass
class FidelitySettings:
    root: str | None = None  # a folder of held-out images; None = the built-in held-out generated scenes
    num_images: int = 16
    image_size: int = 224  # centre crops of this side
    scale: int = 2  # the target grid is `scale` times the token grid
    batch_size: int = 8

    def __post_init__(self) -> None:
        require_at_least_one(self, "protocol", "num_images", "image_size", "scale", "batch_size")


def read_eval_images(root: str | None, num_images: int, image_size: int) -> tuple[torch.Tensor, int]:
    """((N, 3, S, S) centre crops: the first ``num_images`` readable images of ``root``, or held-out generated
    scenes; how many unreadable, unsupported or too small files were passed over to find them)."""
    if root is None:
        dataset = SampleImages(num_images, image_size, train=False)
    else:
        dataset = ImageFolder(root, image_size, train=False, argument="protocol.root")
    items = [dataset[i] for i in range(min(num_images, len(dataset)))]
    return torch.stack([item["image"] for item in items]), sum(int(item.get("num_skipped", 0)) for item in items)


def load_eval_images(root: str | None, num_images: int, image_size: int) -> torch.Tensor:
    """The images of ``read_eval_images``; files passed over are logged."""
    images, skipped = read_eval_images(root, num_images, image_size)
    if skipped:
        log.warning("%d files of %s could not be used and were passed over", skipped, root)
    return images


def large_image(batch: torch.Tensor, scale: int) -> torch.Tensor:
    """The image enlarged ``scale`` times (bicubic, antialiased), whose backbone features are the target."""
    size = (batch.shape[-2] * scale, batch.shape[-1] * scale)
    return F.interpolate(batch, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


@torch.no_grad()
def fidelity(extractor: DenseFeatureExtractor, images: torch.Tensor, scale: int = 2,
             batch_size: int = 8) -> dict[str, float]:
    """Cosine similarity and relative L2 of the extractor's features against the large-image target."""
    device = extractor.device
    sums = {"cosine": 0.0, "rel_l2": 0.0, "seconds": 0.0}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        target = extractor.tokens(large_image(batch, scale))  # B, C, scale*h, scale*w
        low = extractor.tokens(batch)
        tick = time.perf_counter()
        pred = extractor.upsample(low, batch, target.shape[-2:]).float()
        sums["seconds"] += time.perf_counter() - tick
        sums["cosine"] += cosine_per_image(pred, target).sum().item()
        sums["rel_l2"] += relative_l2_per_image(pred, target).sum().item()
    n = len(images)
    return {"cosine": sums["cosine"] / n, "rel_l2": sums["rel_l2"] / n, "seconds_per_image": sums["seconds"] / n}


@register_protocol
class Fidelity(Protocol):
    name = "fidelity"
    Settings = FidelitySettings
    table = TableSpec(
        columns=(Column("cosine"), Column("rel_l2", higher_is_better=False),
                 Column("seconds_per_image", higher_is_better=False, unit="s")),
        headline=("cosine", "rel_l2"), per_dataset=False,
    )

    def run(self, extractor: DenseFeatureExtractor, settings: FidelitySettings, run_dir: Path) -> Evaluation:
        images, skipped = read_eval_images(settings.root, settings.num_images, settings.image_size)
        metrics = fidelity(extractor, images, settings.scale, settings.batch_size)
        dataset = {"name": "image_folder" if settings.root else "samples", "split": "held_out",
                   "root": settings.root, "num_images": len(images), "skipped_files": skipped}
        resolution = {"image_size": settings.image_size, "scale": settings.scale,
                      "size_policy": extractor.backbone.spec().get("size_policy")}
        return Evaluation(metrics=metrics, dataset=dataset, resolution=resolution)
