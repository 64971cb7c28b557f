"""Unsupervised single-object discovery with TokenCut (Wang et al., CVPR 2022), scored by CorLoc.

Per image: the extractor's features on the upsampled grid (``upsample_factor`` x the token grid; 1 = the
backbone's own grid through the same path; LiFT/WRC use 2), TokenCut's normalised cut
(evaluation/tokencut/ncut.py: binary graph at ``tau`` with eps 1e-5, second-smallest generalised eigenvector,
bipartition at its mean, the seed's 4-connected component), its box scaled to pixels. An image is correctly
localised when that box has IoU >= 0.5 with any ground-truth box; ``corloc`` is the share of such images.

Settings follow LiFT/WRC's eval_obj_disc.py by default: ``preprocess="square"`` resizes every image to
``image_size`` x ``image_size`` (bilinear, antialiased) and CorLoc is computed in that frame, the ground-truth
boxes rescaled by (S / W, S / H) and truncated to integers as LiFT does. ``preprocess="pad"`` is the original
TokenCut: no resizing, the image padded at the bottom and right to a multiple of the patch with the backbone's
mean colour (zero after its normalisation, as TokenCut pads the normalised image), boxes in original pixels,
predictions clipped to the image. tau is the dataset's and the mode's (``tau=None``, ``TAU``): 0.2 for VOC07 and
VOC12 in both modes; COCO20k 0.3 with ``square`` (LiFT/WRC's script header, reference D.2) and 0.2 with ``pad``
(TokenCut's default, which its reference CorLoc 58.8 comes from); synthetic 0.2 (its data are in the VOC
layout). ``solver="lanczos"`` is the default from the measurement (benchmarks/results/ncut_cpu.md, one thread):
the same partitions and boxes as the dense solver at 196, 784 and 3136 tokens, 1.3x faster at 196, 4.5x at the
default 784 (28 x 28) and 14x at 3136, and 12,544 tokens (112 x 112) in about 5 s, where dense eigh grows as
N^2.6. The partitions are the dense solver's up to a repeated lambda2, where any vector of the eigenspace is a
cut and Lanczos hands the grid to the dense solver (logged; evaluation/tokencut/ncut.py). ``solver="dense"`` is
TokenCut's scipy eigh. (Multi-threaded BLAS right after torch ops also slows dense eigh far more than Lanczos on
a busy CPU.)

The datasets (evaluation/tokencut/datasets.py): ``voc07`` and ``voc12`` (trainval, all objects; ``no_hard``
drops every truncated or difficult object from the ground truth, then the images left without objects, as
TokenCut's --no_hard), ``coco20k`` (train2014 subset, crowd boxes dropped), ``synthetic``
(evaluation/synthetic/discovery.py, written into ``run_dir/synthetic_data`` in the VOC07 layout and read by the
same loader, recorded as ``synthetic_objects``; the oracle backbone: GroundTruth 100 % CorLoc, bilinear 64 % on 64
scenes). Per-image boxes go to ``run_dir/predictions.json``, rewritten atomically as the run goes: a killed run
resumes with the images it has not done, after checking that the file belongs to the same settings, upsampler,
backbone and code (``wrc.provenance.code_identity``: version and commit, and ``PREDICTIONS_VERSION``, bumped
when the per-image computation changes; uncommitted edits are not detected).

    python -m evaluation protocol=object_discovery protocol.dataset=voc07 protocol.root=/data/datasets \
        backbone=dino_vits16_key model=bilinear
    python -m evaluation protocol=object_discovery protocol.dataset=synthetic model=bilinear
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol
from evaluation.run_identity import refuse_another_run, run_identity
from evaluation.synthetic.discovery import write_discovery_dataset
from evaluation.tokencut import datasets
from evaluation.tokencut.metrics import box_iou, corloc, is_correct
from evaluation.tokencut.ncut import EPS, SOLVERS, normalized_cut, pixel_box
from wrc.checkpoint import atomic_write_text
from wrc.data.io import read_rgb
from wrc.extractor import DenseFeatureExtractor
from wrc.settings import SettingsError, require_at_least_one

log = logging.getLogger("wrc")
DATASETS = ("voc07", "voc12", "coco20k", "synthetic")
PREPROCESS = ("square", "pad")
TAU = {  # preprocess -> dataset -> tau when protocol.tau is None
    "square": {"voc07": 0.2, "voc12": 0.2, "coco20k": 0.3, "synthetic": 0.2},  # LiFT/WRC (reference D.2)
    "pad": {"voc07": 0.2, "voc12": 0.2, "coco20k": 0.2, "synthetic": 0.2},  # TokenCut's default 0.2 (D.1)
}
PREDICTIONS_VERSION = 1  # bump when the per-image computation changes (a resumed run then refuses older results)
SYNTHETIC_NAME = "synthetic_objects"  # the record's dataset name of dataset=synthetic
RESUME_MAY_CHANGE = ("root", "stop_after")  # settings a resumed run may change
SAVE_EVERY_IMAGES, SAVE_EVERY_S = 32, 20.0  # predictions are rewritten after this many new images or seconds


def check_cut_settings(settings: Any) -> None:
    """The checks both TokenCut protocols share."""
    if settings.solver not in SOLVERS:
        raise SettingsError(f"protocol.solver={settings.solver!r}; expected one of {SOLVERS}")
    if not settings.eps > 0:
        raise SettingsError(f"protocol.eps must be > 0 (it keeps the graph connected); got {settings.eps}")
    if settings.tau is not None and not -1 <= settings.tau < 1:
        raise SettingsError(f"protocol.tau is a cosine threshold in [-1, 1); got {settings.tau}")
    require_at_least_one(settings, "protocol", "upsample_factor", "synthetic_images")
    for key in ("max_images", "stop_after"):
        if getattr(settings, key) is not None:
            require_at_least_one(settings, "protocol", key)


@dataclass
class ObjectDiscoverySettings:
    dataset: str = "voc07"  # voc07 | voc12 | coco20k | synthetic
    root: str | None = None  # the folder holding VOC2007/, VOC2012/ or coco_20k_filenames.txt + COCO/ (TokenCut's)
    split: str | None = None  # None: trainval (VOC), train (COCO20k)
    preprocess: str = "square"  # square (LiFT/WRC: resize to image_size, CorLoc in that frame) | pad (TokenCut)
    image_size: int = 224  # side of the square frame (preprocess=square)
    upsample_factor: int = 2  # features on upsample_factor x the token grid (LiFT/WRC: 2; 1 = the token grid)
    tau: float | None = None  # None: TAU (0.2; COCO20k 0.3 with preprocess=square, 0.2 with pad)
    eps: float = EPS
    binary_graph: bool = True  # False: TokenCut's --no-binary-graph ablation (similarities >= tau kept as weights)
    solver: str = "lanczos"  # lanczos (measured faster, dense's boxes; ncut.py) | dense (TokenCut's scipy eigh)
    no_hard: bool = False  # drop truncated/difficult VOC objects, then images left without any (TokenCut's --no_hard)
    max_images: int | None = None  # the first images of the list only
    stop_after: int | None = None  # stop (saved) after this many new images; the same command resumes
    synthetic_images: int = 64
    seed: int = 0  # of the synthetic scenes

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise SettingsError(f"protocol.dataset={self.dataset!r}; expected one of {DATASETS}")
        if self.preprocess not in PREPROCESS:
            raise SettingsError(f"protocol.preprocess={self.preprocess!r}; expected one of {PREPROCESS}")
        require_at_least_one(self, "protocol", "image_size")
        check_cut_settings(self)


class PredictionStore:
    """Per-image results in a JSON file, rewritten atomically every few images and on the way out, so that a
    killed run resumes; ``identity`` must match the file's (else the run refuses to mix two runs)."""

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path, self.identity = path, json.loads(json.dumps(identity))
        self.items: dict[str, Any] = {}
        self.unsaved, self.saved_at = 0, time.monotonic()
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} cannot be read ({err}); delete it to start over") from None
            refuse_another_run(saved.get("identity", {}), self.identity, f"{path} holds predictions",
                               "use another run_dir, or delete the file to start over")
            self.items = saved["images"]
            log.info("resuming from %s: %d images done", path, len(self.items))

    def __contains__(self, name: str) -> bool:
        return name in self.items

    def add(self, name: str, result: dict[str, Any]) -> None:
        self.items[name] = result
        self.unsaved += 1
        if self.unsaved >= SAVE_EVERY_IMAGES or time.monotonic() - self.saved_at >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        if self.unsaved or not self.path.is_file():
            atomic_write_text(self.path, json.dumps({"identity": self.identity, "images": self.items}))
        self.unsaved, self.saved_at = 0, time.monotonic()


def predictions_identity(protocol: str, settings: Any, extractor: DenseFeatureExtractor,
                         predictions_version: int) -> dict[str, Any]:
    """What a resumed run must share with the saved predictions: the run identity (settings but
    ``RESUME_MAY_CHANGE``) and the protocol's ``PREDICTIONS_VERSION``."""
    return run_identity(protocol, settings, extractor, run_only=RESUME_MAY_CHANGE,
                        predictions_version=predictions_version)


@torch.no_grad()
def grid_features(extractor: DenseFeatureExtractor, image: torch.Tensor, factor: int) -> torch.Tensor:
    """(C, factor * h, factor * w) features of one (3, H, W) image on the upsampled grid, on the CPU."""
    batch = image[None].to(extractor.device)
    tokens = extractor.tokens(batch)
    size = (factor * tokens.shape[-2], factor * tokens.shape[-1])
    return extractor.upsample(tokens, batch, size)[0].float().cpu()


def check_patch_multiple(side: int, patch: int, key: str) -> None:
    if side % patch:
        raise ValueError(f"{key}={side} must be a multiple of the backbone's patch size {patch}")


def square_frame(image: torch.Tensor, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """LiFT/WRC: the image resized to size x size (bilinear, antialiased), boxes scaled and truncated to int."""
    height, width = image.shape[-2:]
    frame = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)[0].clamp(0, 1)
    scaled = np.trunc(boxes * np.array([size / width, size / height, size / width, size / height]))
    return frame, scaled


def pad_frame(image: torch.Tensor, patch: int, colour: torch.Tensor | None) -> torch.Tensor:
    """TokenCut: the image padded at the bottom and right to a multiple of the patch, with ``colour``."""
    height, width = image.shape[-2:]
    padded = torch.empty(3, math.ceil(height / patch) * patch, math.ceil(width / patch) * patch)
    padded[:] = (colour.reshape(3, 1, 1).cpu() if colour is not None else 0)
    padded[:, :height, :width] = image
    return padded


def discover(extractor: DenseFeatureExtractor, item: datasets.BoxItem, settings: ObjectDiscoverySettings,
             tau: float) -> dict[str, Any]:
    """The predicted box of one image, its ground truth in the same frame, and whether it localises one."""
    image = read_rgb(item.image)
    height, width = image.shape[-2:]
    patch = extractor.backbone.patch_size
    if settings.preprocess == "square":
        frame, truth = square_frame(image, item.boxes, settings.image_size)
        bounds = (settings.image_size, settings.image_size)
    else:
        frame, truth = pad_frame(image, patch, getattr(extractor.backbone, "mean", None)), item.boxes
        bounds = (height, width)
    features = grid_features(extractor, frame, settings.upsample_factor)
    cut = normalized_cut(features, tau, eps=settings.eps, binary_graph=settings.binary_graph, solver=settings.solver)
    scale = (frame.shape[-2] / features.shape[-2], frame.shape[-1] / features.shape[-1])
    box = pixel_box(cut.box, scale, *bounds)
    iou = float(box_iou(box, truth).max()) if len(truth) else 0.0
    return {"box": [float(v) for v in box], "ground_truth": truth.tolist(), "iou": iou,
            "correct": is_correct(box, truth),
            "size": [int(height), int(width)], "grid": list(features.shape[-2:])}


def score_images(items: list, store: PredictionStore, process: Callable[[Any], dict[str, Any]], settings: Any,
                 description: str) -> tuple[bool, float]:
    """Run ``process(item)`` on every item not in ``store``; (finished, seconds per processed image)."""
    todo = [item for item in items if item.name not in store]
    limit = len(todo) if settings.stop_after is None else min(len(todo), settings.stop_after)
    tick = time.perf_counter()
    try:
        for item in tqdm(todo[:limit], desc=description, initial=len(items) - len(todo), total=len(items)):
            store.add(item.name, process(item))
    finally:
        store.save()
    seconds = (time.perf_counter() - tick) / limit if limit else float("nan")
    if limit < len(todo):
        log.info("stopping after %d new images (protocol.stop_after); run again to resume", limit)
        return False, seconds
    return True, seconds


@register_protocol
class ObjectDiscovery(Protocol):
    name = "object_discovery"
    Settings = ObjectDiscoverySettings
    table = TableSpec(
        columns=(Column("corloc", percent=True), Column("images", unit="count"),
                 Column("seconds_per_image", higher_is_better=False, unit="s")),
        headline=("corloc",), rank_by="corloc",
    )

    def listing(self, settings: ObjectDiscoverySettings, run_dir: Path) -> datasets.Listing:
        if settings.dataset == "synthetic":
            root = write_discovery_dataset(run_dir / "synthetic_data", settings.synthetic_images, settings.seed)
            listing = datasets.voc(root, "voc07", "trainval")
            listing.name = SYNTHETIC_NAME
        elif settings.dataset == "coco20k":
            if settings.split not in (None, "train"):
                raise SettingsError(f"protocol.split={settings.split!r}: COCO20k has the train split only")
            listing = datasets.coco20k(settings.root)
        else:
            listing = datasets.voc(settings.root, settings.dataset, settings.split or "trainval")
        if settings.no_hard:  # TokenCut: the hard objects leave the ground truth, then the images without objects
            listing.items = [easy for easy in (item.without_hard() for item in listing.items) if len(easy.boxes)]
        if settings.max_images is not None:
            listing.items = listing.items[: settings.max_images]
        if not listing.items:
            raise ValueError(f"protocol.dataset={settings.dataset}: no images left to evaluate (no_hard, max_images)")
        return listing

    def run(self, extractor: DenseFeatureExtractor, settings: ObjectDiscoverySettings, run_dir: Path) -> Evaluation:
        if settings.preprocess == "square":
            check_patch_multiple(settings.image_size, extractor.backbone.patch_size, "protocol.image_size")
        listing = self.listing(settings, run_dir)
        tau = TAU[settings.preprocess][settings.dataset] if settings.tau is None else settings.tau
        store = PredictionStore(run_dir / "predictions.json",
                                predictions_identity(self.name, settings, extractor, PREDICTIONS_VERSION))
        dataset = {"name": listing.name, "split": listing.split, "root": str(listing.root),
                   "images": len(listing)}
        finished, seconds = score_images(listing.items, store, lambda item: discover(extractor, item, settings, tau),
                                         settings, f"object discovery {listing.name}")
        if not finished:
            return Evaluation(metrics={}, dataset=dataset, completed=False)
        results = [store.items[item.name] for item in listing.items]
        metrics = {"corloc": corloc([r["correct"] for r in results]), "images": float(len(results))}
        if not math.isnan(seconds):
            metrics["seconds_per_image"] = seconds
        dataset["images_without_boxes"] = sum(not r["ground_truth"] for r in results)
        resolution = {"preprocess": settings.preprocess, "upsample_factor": settings.upsample_factor,
                      "image_size": settings.image_size if settings.preprocess == "square" else None,
                      "grid_first_image": results[0]["grid"], "tau": tau, "solver": settings.solver}
        return Evaluation(metrics=metrics, dataset=dataset, resolution=resolution)
