"""COCO object detection and instance segmentation through ViTDet's Mask R-CNN (LiFT section 3.5, Table 4).

The extractor's backbone is the detector's ViT and its upsampler gives the pyramid's p3 and p2
(evaluation/detection/model.py). Two ways to get the detector:

- ``detector=<checkpoint>`` (a step folder, checkpoints/ or a run directory of
  ``python -m evaluation.detection.train``): scored as trained. Its backbone must be the extractor's (the
  identity upsampler checkpoints are checked by), and
  for an upsampler pyramid its upsampler too (same name, arguments and checkpoint): evaluate with the ``backbone=``
  and ``model=``/``checkpoint=`` it was trained with. Parts the detector trained or loaded (a fine-tuned ViT, an
  upsampler trained with it) come from its checkpoint, on copies of the extractor's. The detector's own image
  size is used (the record's ``resolution.image_size``); ``pyramid`` and ``image_size`` here are for training.
- no ``detector``: a detector is trained here first, for ``train_steps`` steps on ``train_split`` with the
  extractor frozen (LiFT's step 3 without a pretrained head: the pyramid's projections, the RPN and the ROI heads
  learn), in ``run_dir/detector`` (resumable: the same command continues it; other settings are refused).
  ``pyramid=tconv`` trains ViTDet's transposed-conv pyramid instead of using the upsampler (the baseline row;
  ``resolution.pyramid`` says which, and tables keep the two apart).

Metrics: pycocotools' box and mask AP, AP50, AP75, APs, APm, APl on ``split`` (fractions; a size without ground
truth is null), over the first ``max_images`` images when set; ``predictions_bbox.json`` and
``predictions_segm.json`` (COCO results) are written beside the record. ``dataset=synthetic`` generates scenes in
the COCO layout (evaluation/synthetic/detection.py) in ``run_dir/synthetic_data`` and runs on the oracle
backbone with patch 16.

    python -m evaluation protocol=detection protocol.root=/data/coco protocol.detector=<run> backbone=dino_vits16 \
        checkpoint=<upsampler run>
    python -m evaluation protocol=detection protocol.dataset=synthetic model=bilinear protocol.train_steps=1500
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from evaluation.detection import checkpoint as ckpt
from evaluation.detection.coco import CategoryMap, CocoInstances, metric_names
from evaluation.detection.inference import evaluate_detector
from evaluation.detection.model import TCONV
from evaluation.detection.settings import DetectorModel
from evaluation.detection.train import autocast_for, make_detector, oracle_backbone, train_detector, upsampler_spec
from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol
from evaluation.synthetic.detection import write_synthetic_coco
from wrc.extractor import DenseFeatureExtractor, backbone_differences
from wrc.settings import SettingsError, require_at_least_one
from wrc.upsamplers import Upsampler

DATASETS = {"coco": "coco", "synthetic": "synthetic_detection"}  # setting -> the record's dataset name
PYRAMIDS = ("upsampler", TCONV)


@dataclass
class DetectionSettings:
    dataset: str = "coco"  # coco | synthetic (generated scenes in the COCO layout, on the oracle backbone)
    root: str | None = None  # the COCO folder (train2017/, val2017/, annotations/); synthetic: unused
    split: str = "val2017"
    detector: str | None = None  # a trained detector; null: train one here (module docstring)
    train_split: str = "train2017"  # training here
    pyramid: str = "upsampler"  # training here: upsampler (the extractor's) | tconv (ViTDet's, the baseline)
    heads: str = "vitdet"  # training here: vitdet | torchvision
    image_size: int = 1024  # training here: LSJ crop and test size
    train_steps: int = 10000
    batch_size: int = 2
    lr: float = 1.0e-4
    model: dict[str, Any] = field(default_factory=dict)  # training here: more model.* of the detector (settings.py)
    eval_batch_size: int = 4
    max_images: int | None = None  # score the first N images of the split (null: all)
    synthetic_train_images: int = 256
    synthetic_val_images: int = 64
    synthetic_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise SettingsError(f"protocol.dataset={self.dataset!r}; expected one of {tuple(DATASETS)}")
        if self.pyramid not in PYRAMIDS:
            raise SettingsError(f"protocol.pyramid={self.pyramid!r}; expected one of {PYRAMIDS}")
        require_at_least_one(self, "protocol", "image_size", "train_steps", "batch_size", "eval_batch_size",
                             "synthetic_train_images", "synthetic_val_images")
        if self.max_images is not None and self.max_images < 1:
            raise SettingsError(f"protocol.max_images must be >= 1, or null; got {self.max_images}")
        unknown = sorted(set(self.model) - set(DetectorModel.__dataclass_fields__))
        if unknown:
            raise SettingsError(f"protocol.model has unknown keys {unknown}; valid: "
                                f"{sorted(DetectorModel.__dataclass_fields__)}")


@register_protocol
class Detection(Protocol):
    name = "detection"
    Settings = DetectionSettings
    table = TableSpec(columns=tuple(Column(m, percent=True) for m in metric_names()), headline=("box_ap", "mask_ap"),
                      rank_by="box_ap", split_by=("pyramid",))

    def make_backbone(self, settings: DetectionSettings) -> nn.Module | None:
        return oracle_backbone() if settings.dataset == "synthetic" else None

    def run(self, extractor: DenseFeatureExtractor, settings: DetectionSettings, run_dir: Path) -> Evaluation:
        root, split, train_split = settings.root, settings.split, settings.train_split
        if settings.dataset == "synthetic":
            root = write_synthetic_coco(run_dir / "synthetic_data", settings.synthetic_train_images,
                                        settings.synthetic_val_images, settings.synthetic_size, settings.seed)
            split, train_split = "val2017", "train2017"
        dataset = CocoInstances(root, split, argument="protocol.root")
        if settings.detector:
            detector, meta = load_detector(settings.detector, extractor.backbone, extractor.upsampler)
            categories = CategoryMap(tuple(meta["categories"]["ids"]), tuple(meta["categories"]["names"]))
            pyramid, image_size = (TCONV if meta["upsampler"] is None else "upsampler"), meta["image_size"]
        else:
            trained = train_detector(training_config(settings, extractor, root, train_split, run_dir),
                                     backbone=extractor.backbone,
                                     upsampler=None if settings.pyramid == TCONV else extractor.upsampler)
            detector, categories = trained.detector, trained.categories
            pyramid, image_size = settings.pyramid, settings.image_size
        categories.check_covers(dataset.categories, str(dataset.annotations))
        detector.to(extractor.device)
        metrics = evaluate_detector(detector, dataset, run_dir, extractor.device, batch_size=settings.eval_batch_size,
                                    max_images=settings.max_images,
                                    autocast=autocast_for("auto", extractor.device))
        count = len(dataset) if settings.max_images is None else min(settings.max_images, len(dataset))
        return Evaluation(
            metrics=metrics,
            dataset={"name": DATASETS[settings.dataset], "split": split, "root": str(root), "images": count,
                     "categories": len(dataset.categories.ids)},
            resolution={"image_size": image_size, "pyramid": pyramid, "feature_stride": 16})


def training_config(settings: DetectionSettings, extractor: DenseFeatureExtractor, root: str | Path, train_split: str,
                    run_dir: Path) -> dict[str, Any]:
    """The evaluation.detection.train config of the detector trained here: the extractor frozen (a transposed-conv
    pyramid trains its convolutions), the upsampler named by its checkpoint or name (so a resume with another one
    is refused)."""
    tconv = settings.pyramid == TCONV
    spec = extractor.upsampler_spec()
    return {
        "seed": settings.seed, "device": str(extractor.device), "run_dir": str(run_dir / "detector"),
        "resume": "auto", "backbone": extractor.backbone.spec(),
        "data": {"dataset": "coco", "root": str(root), "train_split": train_split, "val_split": settings.split,
                 "image_size": settings.image_size, "batch_size": settings.batch_size, "num_workers": 0,
                 **({"scale_range": [0.8, 1.25]} if settings.dataset == "synthetic" else {})},
        "model": {"pyramid": TCONV if tconv else str(spec["checkpoint"] or spec["name"]), "heads": settings.heads,
                  "freeze": "backbone" if tconv else "backbone_upsampler", **settings.model},
        "optimizer": {"lr": settings.lr, "warmup_steps": min(250, settings.train_steps // 10)},
        "train": {"max_steps": settings.train_steps, "log_every": max(1, min(20, settings.train_steps)),
                  "ckpt_every": max(1, min(1000, settings.train_steps)), "evaluate": False},
    }


def load_detector(path: str, backbone: nn.Module, upsampler: Upsampler) -> tuple[nn.Module, dict[str, Any]]:
    """The detector of checkpoint ``path`` on ``backbone`` (and ``upsampler`` for an upsampler pyramid), after
    checking they are the ones it was trained with."""
    meta = ckpt.read_meta(path)
    differences = backbone_differences(meta.get("backbone", {}), backbone.spec())
    if differences:
        raise ValueError(f"detector {path} was trained on another backbone ({'; '.join(differences)}): evaluate it "
                         "with the backbone it was trained on")
    expected = meta.get("upsampler")
    if expected is not None:
        given = upsampler_spec(upsampler)
        if any(given.get(k) != expected.get(k) for k in ("name", "kwargs", "checkpoint")):
            how = f"checkpoint={expected['checkpoint']}" if expected.get("checkpoint") else f"model={expected['name']}"
            raise ValueError(f"detector {path} was trained with the upsampler {expected} but the extractor's is "
                             f"{given}: evaluate it with {how}")
    saved = meta.get("saved", {})
    if saved.get("vit"):
        backbone = copy.deepcopy(backbone)  # the detector's fine-tuned ViT, not the extractor's
    if expected is not None and saved.get("upsampler"):
        upsampler = copy.deepcopy(upsampler)
    model = DetectorModel.from_mapping(meta["model"])
    categories = CategoryMap(tuple(meta["categories"]["ids"]), tuple(meta["categories"]["names"]))
    detector = make_detector(model, backbone, categories, meta["image_size"], upsampler if expected else None)
    result = detector.load_state_dict(ckpt.read_weights(path), strict=False)
    frozen = tuple(prefix for part, prefix in ckpt.PARTS.items() if not saved.get(part))
    missing = [k for k in result.missing_keys if not k.startswith(frozen)]
    if missing or result.unexpected_keys:
        raise ValueError(f"detector {path} does not fit the detector its detector.json describes: missing "
                         f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return detector.eval().requires_grad_(False), meta
