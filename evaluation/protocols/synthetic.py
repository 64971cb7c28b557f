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
``GroundTruth`` (the field itself) is the ceiling of miou and boundary_f. A killed run resumes: each probe batch's
features, the fitted probe and each test batch's scores are kept in ``run_dir/field_partial/`` as they are made
(with the run's identity, so another run's are never mixed in); the probe features go once the probe is saved. A
test-time fitted method takes minutes a scene on a CPU (Upsample Anything), so this matters. Training the
learned methods is the benchmark's job (``python -m evaluation.synthetic``); this protocol scores whatever it is given:

    python -m evaluation protocol=synthetic model=bilinear
    python -m evaluation protocol=synthetic checkpoint=outputs/synthetic/wrc
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from evaluation.heads import fit_full_batch
from evaluation.metrics import BoundaryFScore, ConfusionMatrix, cosine_per_image, relative_l2_per_image
from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol
from evaluation.run_identity import StaleRunError, refuse_another_run, run_identity
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.scenes import CLASSES, SyntheticScenes
from wrc.checkpoint import atomic_torch_save, atomic_write_text
from wrc.extractor import DenseFeatureExtractor
from wrc.settings import require_at_least_one
from wrc.upsamplers.base import Upsampler

PROBE_STEPS, PROBE_LR = 200, 0.05
PARTIAL = "field_partial"  # run_dir/<this>: what a killed run has done (PartialField)
PARTIAL_VERSION = 2  # bump when what a batch's saved result means changes: older partials are then refused as stale
# (StaleRunError; the synthetic benchmark deletes them and rescores)


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
def scene_batch(extractor: DenseFeatureExtractor, scenes: SyntheticScenes, start: int, batch_size: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, tokens, ground-truth field, class map) of scenes start.. start + batch_size - 1, on the extractor's
    device (the class map on the CPU)."""
    oracle = extractor.backbone
    device = next(oracle.buffers()).device
    batch = [scenes.scene(i) for i in range(start, min(start + batch_size, len(scenes)))]
    images, labels = torch.stack([s.image for s in batch]).to(device), torch.stack([s.classes for s in batch])
    return images, extractor.tokens(images), oracle.dense(images), labels


class PartialField:
    """A field run's results so far, one file per batch in ``folder`` (written atomically as each is made) and the
    run's identity beside them: another run's files raise StaleRunError, never mixed in."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder, self.identity = folder, json.loads(json.dumps(identity))
        saved = folder / "identity.json"
        if saved.is_file():
            try:
                kept = json.loads(saved.read_text())
            except json.JSONDecodeError as err:  # written atomically: only a foreign or hand-edited file gets here
                raise StaleRunError(f"{saved} cannot be read ({err}): delete the folder to start over, or use "
                                    "another run_dir") from None
            refuse_another_run(kept, self.identity, f"{folder} holds partial results",
                               "delete the folder to start over, or use another run_dir")
        elif folder.is_dir() and any(folder.iterdir()):
            raise StaleRunError(f"{folder} holds partial results without their identity.json, so whose they are is "
                                "unknown: delete the folder to start over, or use another run_dir")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, json.dumps(self.identity))

    def get(self, name: str) -> Any | None:
        path = self.folder / f"{name}.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def put(self, name: str, value: Any) -> None:
        atomic_torch_save(value, self.folder / f"{name}.pt")

    def drop(self, prefix: str) -> None:
        for path in self.folder.glob(f"{prefix}*.pt"):
            path.unlink()

    def batches(self, name: str, total: int, batch_size: int, make: Callable[[int], dict[str, Any]],
                description: str) -> list[dict[str, Any]]:
        """Each batch's result, read from disk or made by ``make(start)`` and saved as soon as it is made, with the
        seconds ``make`` took under "seconds" (the disk write not counted), so a resumed run's timing is whole."""
        results = []
        for start in tqdm(range(0, total, batch_size), desc=description, unit="batch", leave=False):
            result = self.get(f"{name}_{start:05d}")
            if result is None:
                tick = time.perf_counter()
                result = make(start)
                result["seconds"] = time.perf_counter() - tick
                self.put(f"{name}_{start:05d}", result)
            results.append(result)
        return results


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
        partial = PartialField(Path(run_dir) / PARTIAL,
                               run_identity(self.name, settings, extractor, partial_version=PARTIAL_VERSION))
        probe = self.probe(extractor, settings, partial)
        cell = extractor.backbone.patch_size // 2

        def score_batch(start: int) -> dict[str, torch.Tensor]:
            images, tokens, field, classes = scene_batch(extractor, test, start, settings.batch_size)
            pred = extractor.upsample(tokens, images, field.shape[-2:]).float()
            field_2x = F.avg_pool2d(field, cell)
            pred_2x = extractor.upsample(tokens, images, field_2x.shape[-2:]).float()
            return {"cosine": cosine_per_image(pred, field).cpu(), "rel_l2": relative_l2_per_image(pred, field).cpu(),
                    "cosine_2x": cosine_per_image(pred_2x, field_2x).cpu(),
                    "predicted": probe(pred).argmax(dim=1).to(torch.uint8).cpu(), "classes": classes.to(torch.uint8)}

        scored = partial.batches("test", len(test), settings.batch_size, score_batch, "synthetic test scenes")
        confusion, boundaries = ConfusionMatrix(len(CLASSES)), BoundaryFScore(tolerance=2)
        sums = {key: float(sum(batch[key].sum().item() for batch in scored)) for key in ("cosine", "rel_l2",
                                                                                           "cosine_2x")}
        for batch in scored:
            predicted, classes = batch["predicted"].long(), batch["classes"].long()
            confusion.update(predicted, classes)
            boundaries.update(predicted, classes)
        n = len(test)
        segmentation = confusion.compute()
        metrics = {**{key: value / n for key, value in sums.items()}, "miou": segmentation["miou"],
                   "pixel_accuracy": segmentation["pixel_accuracy"], **boundaries.compute(),
                   "seconds_per_image": sum(batch["seconds"] for batch in scored) / n}
        return Evaluation(
            metrics=metrics, dataset={"name": "synthetic_scenes", "split": "test", "root": None, "scenes": n},
            resolution={"image_size": settings.image_size, "output": "pixel grid and 2x the token grid"},
            per_item={"per_class_iou": dict(zip(CLASSES, segmentation["per_class_iou"], strict=True))},
        )

    @staticmethod
    def probe(extractor: DenseFeatureExtractor, settings: SyntheticSettings, partial: PartialField) -> nn.Conv2d:
        """The linear probe fitted on the method's output for the probe scenes (saved once fitted: its training
        features are then dropped)."""
        saved = partial.get("probe")
        if saved is not None:
            partial.drop("probe_features")  # when the run was killed between saving the probe and this
            with torch.random.fork_rng(devices=[]):  # the global RNG stays where a fresh run leaves it
                probe = nn.Conv2d(extractor.backbone.embed_dim, len(CLASSES), 1)
            probe.load_state_dict(saved)
            return probe.to(extractor.device).requires_grad_(False).eval()
        scenes = SyntheticScenes(settings.probe_scenes, settings.image_size)

        def upsample_batch(start: int) -> dict[str, torch.Tensor]:
            images, tokens, field, classes = scene_batch(extractor, scenes, start, settings.batch_size)
            return {"features": extractor.upsample(tokens, images, field.shape[-2:]).float().cpu(), "classes": classes}

        batches = partial.batches("probe_features", len(scenes), settings.batch_size, upsample_batch,
                                     "synthetic probe scenes")
        probe = fit_scene_probe(torch.cat([b["features"] for b in batches]).to(extractor.device),
                                torch.cat([b["classes"] for b in batches]), seed=settings.seed)
        partial.put("probe", probe.state_dict())
        partial.drop("probe_features")
        return probe
