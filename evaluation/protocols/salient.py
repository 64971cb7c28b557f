"""Unsupervised salient-object segmentation with TokenCut (Wang et al., CVPR 2022): maxF, IoU and accuracy.

Per image (TokenCut's get_saliency): the image resized with LANCZOS to (round(W / p) p, round(H / p) p) for the
patch size p; the extractor's features on the upsampled grid (``upsample_factor`` x the token grid, as in
object_discovery; 1 = the backbone's own grid, which is TokenCut's); the same normalised cut
(evaluation/tokencut/ncut.py, tau 0.2, eps 1e-5); the seed's connected component is the mask, upsampled to the
original H x W by nearest neighbour. Metrics (evaluation/tokencut/metrics.py) per image at the original
resolution, averaged over images: ``max_f`` (beta^2 = 0.3, the maximum over 255 thresholds of the per-threshold
mean F; the headline), ``iou`` and ``accuracy`` after binarising at 0.5.

``refine="bilateral_solver"`` is "TokenCut + BS": the fast bilateral solver (evaluation/tokencut/
bilateral_solver.py, ``refine_mask``; sigma_spatial 16, sigma_luma 16, sigma_chroma 8, lambda 256, confidence
0.999 everywhere) refines the upsampled mask against the original image into a soft map. The metrics are
computed on that soft map, clipped to [0, 1]: it is what TokenCut's reported +BS numbers score, and maxF needs a
map with more than one level to sweep its thresholds over (the plain mask is binary, so its maxF is its mean F).
TokenCut's binary output (refine_mask's: the soft map > 0.5, holes filled, the largest component kept) is scored
too, as ``iou_binary``, for whoever needs masks. Per-image results (the 255-point F curve, IoU, accuracy) go to
``run_dir/predictions.json``, rewritten atomically as the run goes, so a killed run resumes (same identity check
as object_discovery: settings, upsampler, backbone, code version and ``PREDICTIONS_VERSION``).

Datasets (evaluation/tokencut/datasets.py, TokenCut's layout): ``ecssd`` (root/ECSSD), ``duts_te``
(root/DUTS_Test), ``dut_omron`` (root/DUT_OMRON), each with img/*.jpg and gt/*.png; ``synthetic``
(evaluation/synthetic/discovery.py, written into ``run_dir/synthetic_data`` in the ECSSD layout, recorded as
``synthetic_objects``; the oracle: GroundTruth maxF 93.6 %, bilinear 89.6 % on 64 scenes). ``solver`` as in
object_discovery (Lanczos by default: the dense solver's masks up to a repeated lambda2, where it uses the dense
solver's; measured faster).

    python -m evaluation protocol=salient protocol.dataset=ecssd protocol.root=/data/datasets \
        backbone=dino_vits16_key model=bilinear
    python -m evaluation protocol=salient protocol.dataset=ecssd protocol.root=/data/datasets \
        protocol.refine=bilateral_solver backbone=dino_vits16_key model=bilinear
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol
from evaluation.protocols.object_discovery import (
    PredictionStore,
    check_cut_settings,
    grid_features,
    predictions_identity,
    score_images,
)
from evaluation.synthetic.discovery import write_discovery_dataset
from evaluation.tokencut import datasets
from evaluation.tokencut.bilateral_solver import refine_mask
from evaluation.tokencut.metrics import accuracy, f_curve, mask_iou, max_f
from evaluation.tokencut.ncut import EPS, normalized_cut
from wrc.data.io import read_rgb
from wrc.extractor import DenseFeatureExtractor
from wrc.settings import SettingsError

DATASETS = ("ecssd", "duts_te", "dut_omron", "synthetic")
TAU = 0.2  # TokenCut's, on every salient dataset
REFINE = ("none", "bilateral_solver")
PREDICTIONS_VERSION = 1  # bump when the per-image computation changes (a resumed run then refuses older results)
SYNTHETIC_NAME = "synthetic_objects"  # the record's dataset name of dataset=synthetic


@dataclass
class SalientSettings:
    dataset: str = "ecssd"  # ecssd | duts_te | dut_omron | synthetic
    root: str | None = None  # the folder holding ECSSD/, DUTS_Test/ or DUT_OMRON/ (TokenCut's datasets/)
    upsample_factor: int = 2  # features on upsample_factor x the token grid (LiFT/WRC: 2; TokenCut: 1)
    tau: float | None = None  # None: 0.2 (TokenCut's)
    eps: float = EPS
    binary_graph: bool = True
    solver: str = "lanczos"  # lanczos (measured faster, dense's partitions; ncut.py) | dense (TokenCut's scipy eigh)
    refine: str = "none"  # none (TokenCut) | bilateral_solver (TokenCut + BS; metrics on its soft map)
    max_images: int | None = None  # the first images (sorted by name) only
    stop_after: int | None = None  # stop (saved) after this many new images; the same command resumes
    synthetic_images: int = 64
    seed: int = 0  # of the synthetic scenes

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise SettingsError(f"protocol.dataset={self.dataset!r}; expected one of {DATASETS}")
        if self.refine not in REFINE:
            raise SettingsError(f"protocol.refine={self.refine!r}; expected one of {REFINE}")
        check_cut_settings(self)


def lanczos_resize(image: torch.Tensor, patch: int) -> tuple[torch.Tensor, np.ndarray]:
    """(the image resized with LANCZOS to the nearest multiples of the patch, the original as (H, W, 3) uint8)."""
    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    height, width = pixels.shape[:2]
    size = (max(1, round(width / patch)) * patch, max(1, round(height / patch)) * patch)
    resized = np.asarray(Image.fromarray(pixels).resize(size, Image.LANCZOS))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255, pixels


def segment(extractor: DenseFeatureExtractor, item: datasets.MaskItem, settings: SalientSettings,
            tau: float) -> dict[str, Any]:
    """The per-image metrics of one image's TokenCut mask (and its refinement)."""
    image = read_rgb(item.image)
    height, width = image.shape[-2:]
    truth = datasets.read_mask(item.mask)
    if truth.shape != (height, width):
        raise ValueError(f"{item.mask}: the ground truth is {truth.shape[1]}x{truth.shape[0]} pixels but its image "
                         f"{item.image} is {width}x{height}")
    frame, pixels = lanczos_resize(image, extractor.backbone.patch_size)
    features = grid_features(extractor, frame, settings.upsample_factor)
    cut = normalized_cut(features, tau, eps=settings.eps, binary_graph=settings.binary_graph, solver=settings.solver)
    component = torch.from_numpy(cut.component).float()[None, None]
    mask = F.interpolate(component, size=(height, width), mode="nearest")[0, 0].numpy()
    result: dict[str, Any] = {}
    if settings.refine == "bilateral_solver":  # TokenCut + BS: score the soft map (in [0, 1]), keep the binary's IoU
        soft, binary = refine_mask(pixels, mask)
        mask = np.clip(soft, 0.0, 1.0)
        result["iou_binary"] = mask_iou(binary, truth)
    curve = f_curve(mask, truth)
    return {"f": [round(float(v), 6) for v in curve], "iou": mask_iou(mask, truth), "accuracy": accuracy(mask, truth),
            **result, "size": [int(height), int(width)], "grid": list(features.shape[-2:])}


@register_protocol
class Salient(Protocol):
    name = "salient"
    Settings = SalientSettings
    table = TableSpec(
        columns=(Column("max_f", percent=True), Column("iou", percent=True), Column("accuracy", percent=True),
                 Column("iou_binary", percent=True), Column("images", unit="count"),
                 Column("seconds_per_image", higher_is_better=False, unit="s")),
        headline=("max_f",), rank_by="max_f",
    )

    def listing(self, settings: SalientSettings, run_dir: Path) -> datasets.Listing:
        if settings.dataset == "synthetic":
            root = write_discovery_dataset(run_dir / "synthetic_data", settings.synthetic_images, settings.seed)
            listing = datasets.salient(root, "ecssd")
            listing.name = SYNTHETIC_NAME
        else:
            listing = datasets.salient(settings.root, settings.dataset)
        if settings.max_images is not None:
            listing.items = listing.items[: settings.max_images]
        return listing

    def run(self, extractor: DenseFeatureExtractor, settings: SalientSettings, run_dir: Path) -> Evaluation:
        listing = self.listing(settings, run_dir)
        tau = TAU if settings.tau is None else settings.tau
        store = PredictionStore(run_dir / "predictions.json", predictions_identity(self.name, settings, extractor,
                                                                             PREDICTIONS_VERSION))
        dataset = {"name": listing.name, "split": listing.split, "root": str(listing.root), "images": len(listing)}
        finished, seconds = score_images(listing.items, store, lambda item: segment(extractor, item, settings, tau),
                                         settings, f"salient {listing.name}")
        if not finished:
            return Evaluation(metrics={}, dataset=dataset, completed=False)
        results = [store.items[item.name] for item in listing.items]
        metrics = {"max_f": max_f([np.asarray(r["f"]) for r in results]),
                   "iou": float(np.mean([r["iou"] for r in results])),
                   "accuracy": float(np.mean([r["accuracy"] for r in results])), "images": float(len(results))}
        if settings.refine == "bilateral_solver":
            metrics["iou_binary"] = float(np.mean([r["iou_binary"] for r in results]))
        if not math.isnan(seconds):
            metrics["seconds_per_image"] = seconds
        resolution = {"resize": "lanczos to multiples of the patch", "upsample_factor": settings.upsample_factor,
                      "grid_first_image": results[0]["grid"], "tau": tau, "solver": settings.solver,
                      "refine": settings.refine, "scored_at": "original resolution"}
        return Evaluation(metrics=metrics, dataset=dataset, resolution=resolution)
