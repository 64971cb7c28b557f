"""The synthetic protocol: an extractor on the oracle backbone against the known ground-truth field.

Generated 128-pixel scenes (evaluation/synthetic/scenes.py) and the oracle backbone (oracle.py, 32
channels, 8-pixel patches, chosen by this protocol: ``make_backbone``): upsamplers see 16 x 16 tokens
and must produce the 128 x 128 field. Metrics on held-out scenes, at the pixel grid:
- cosine (higher is better) and rel_l2 = ||pred - field|| / ||field|| per image (lower is better);
- cosine_2x: the cosine at twice the token grid, where the field is averaged over each cell (the
  factor WRC, Converse2D and LiFT are trained for; the pixel grid takes them three steps);
- miou and boundary_f: a linear 1x1 probe fitted on the method's own pixel-grid output for
  ``probe_scenes`` training scenes (full batch, 200 steps) classifies the held-out scenes; boundary_f
  scores the class edges of its prediction within 2 pixels of the true ones.
``GroundTruth`` (the field itself) is the ceiling of miou and boundary_f. Training the learned methods
is the benchmark's job (``python -m evaluation.synthetic``); this protocol scores whatever it is given:

    python -m evaluation protocol=synthetic model=bilinear
    python -m evaluation protocol=synthetic checkpoint=outputs/synthetic/wrc
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.heads import fit_full_batch
from evaluation.metrics import BoundaryFScore, ConfusionMatrix, cosine_per_image, relative_l2_per_image
from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.scenes import CLASSES, SyntheticScenes
from wrc.extractor import DenseFeatureExtractor
from wrc.settings import require_at_least_one
from wrc.upsamplers.base import Upsampler

PROBE_STEPS, PROBE_LR = 200, 0.05


@dataclass
class SyntheticSettings:
    image_size: int = 128  # a multiple of 16 (twice the oracle's patch)
    test_scenes: int = 32
    probe_scenes: int = 16  # training scenes each probe is fitted on
    batch_size: int = 8
    seed: int = 0  # the probe's initialisation

    def __post_init__(self) -> None:
        require_at_least_one(self, "protocol", "image_size", "test_scenes", "probe_scenes", "batch_size")
        if self.image_size % 16:
            raise ValueError(f"protocol.image_size must be a multiple of 16 (twice the oracle's patch); "
                             f"got {self.image_size}")


class GroundTruth(Upsampler):
    """The oracle's field averaged to the requested grid: what a perfect upsampler returns (the ceiling row)."""

    name, needs_backbone, trainable = "ground_truth", True, False

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        return F.adaptive_avg_pool2d(backbone.dense(image), size)


@torch.no_grad()
def scene_batches(extractor: DenseFeatureExtractor, scenes: SyntheticScenes, batch_size: int = 8
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images, tokens, ground-truth field, class map) per batch of ``scenes``, on the extractor's device."""
    oracle = extractor.backbone
    device = next(oracle.buffers()).device
    for start in range(0, len(scenes), batch_size):
        batch = [scenes.scene(i) for i in range(start, min(start + batch_size, len(scenes)))]
        images, labels = torch.stack([s.image for s in batch]).to(device), torch.stack([s.classes for s in batch])
        yield images, extractor.tokens(images), oracle.dense(images), labels


def fit_scene_probe(features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> nn.Conv2d:
    """A 1x1-conv linear probe (the JAFAR/WRC protocol) fitted on (N, C, H, W) features, full batch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Conv2d(features.shape[1], len(CLASSES), 1).to(features.device)
    return fit_full_batch(probe, features, labels.to(features.device), F.cross_entropy, steps=PROBE_STEPS,
                          lr=PROBE_LR)


@register_protocol
class Synthetic(Protocol):
    name = "synthetic"
    Settings = SyntheticSettings
    table = TableSpec(
        columns=(Column("cosine"), Column("rel_l2", higher_is_better=False), Column("cosine_2x"),
                 Column("miou"), Column("boundary_f"), Column("boundary_precision"), Column("boundary_recall"),
                 Column("pixel_accuracy"),
                 Column("seconds_per_image", higher_is_better=False, unit="s")),
        headline=("cosine", "rel_l2", "cosine_2x", "miou", "boundary_f"), per_dataset=False, rank_by="cosine",
    )

    def make_backbone(self, settings: SyntheticSettings) -> OracleBackbone:
        return OracleBackbone()

    @torch.no_grad()
    def run(self, extractor: DenseFeatureExtractor, settings: SyntheticSettings, run_dir: Path) -> Evaluation:
        if not isinstance(extractor.backbone, OracleBackbone):
            raise ValueError("protocol=synthetic scores upsamplers on its oracle backbone; build the extractor on "
                             "Synthetic().make_backbone(settings) (the entry point does)")
        test = SyntheticScenes(settings.test_scenes, settings.image_size, train=False)
        probe_scenes = SyntheticScenes(settings.probe_scenes, settings.image_size)
        features, labels = zip(*[(extractor.upsample(tokens, images, field.shape[-2:]).float(), classes)
                                 for images, tokens, field, classes in scene_batches(extractor, probe_scenes,
                                                                                     settings.batch_size)],
                               strict=True)
        probe = fit_scene_probe(torch.cat(features), torch.cat(labels), seed=settings.seed)
        confusion, boundaries = ConfusionMatrix(len(CLASSES)), BoundaryFScore(tolerance=2)
        sums = {"cosine": 0.0, "rel_l2": 0.0, "cosine_2x": 0.0}
        cell = extractor.backbone.patch_size // 2
        tick = time.perf_counter()
        for images, tokens, field, classes in scene_batches(extractor, test, settings.batch_size):
            pred = extractor.upsample(tokens, images, field.shape[-2:]).float()
            sums["cosine"] += cosine_per_image(pred, field).sum().item()
            sums["rel_l2"] += relative_l2_per_image(pred, field).sum().item()
            field_2x = F.avg_pool2d(field, cell)
            pred_2x = extractor.upsample(tokens, images, field_2x.shape[-2:]).float()
            sums["cosine_2x"] += cosine_per_image(pred_2x, field_2x).sum().item()
            predicted = probe(pred).argmax(dim=1).cpu()
            confusion.update(predicted, classes)
            boundaries.update(predicted, classes)
        n = len(test)
        segmentation = confusion.compute()
        metrics = {**{key: value / n for key, value in sums.items()}, "miou": segmentation["miou"],
                   "pixel_accuracy": segmentation["pixel_accuracy"], **boundaries.compute(),
                   "seconds_per_image": (time.perf_counter() - tick) / n}
        return Evaluation(
            metrics=metrics, dataset={"name": "synthetic_scenes", "split": "test", "root": None, "scenes": n},
            resolution={"image_size": settings.image_size, "output": "pixel grid and 2x the token grid"},
            per_item={"per_class_iou": dict(zip(CLASSES, segmentation["per_class_iou"], strict=True))},
        )
