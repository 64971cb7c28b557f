"""Every detector-training setting's default and check (``python -m evaluation.detection.train``), in one place.

The defaults are ViTDet's Mask R-CNN recipe (eval_protocols.md F.1): large-scale jitter (flip, resize 0.1-2.0,
fixed 1024 crop), AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.1 (none on norms and position embeddings),
layer-wise lr decay 0.7, a 250-step linear warm-up from 0.001, x0.1 at 88.9 % and 96.3 % of the schedule
(163,889 and 177,546 of 184,375 iterations), bf16 autocast on CUDA. ViTDet's batch is 64 images: here
``data.batch_size`` is per process, so 8 GPUs x 8 are the paper's.

config/detection/train.yaml takes these from Hydra's ConfigStore (no value is restated there);
``DetectionRun.from_mapping`` applies the same defaults to a plain dict, refuses unknown keys and checks values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from evaluation.detection.model import HEADS, TCONV
from wrc.settings import Logger, Section, SettingsError, TrainLoop, _require, _values

DATASETS = ("coco", "synthetic")
FREEZE = ("none", "backbone", "backbone_upsampler")  # what stays frozen (module docstring of train.py)
PRECISIONS = ("auto", "fp32", "bf16")
VITDET_MAX_STEPS = 184_375


@dataclass
class DetectionData(Section):
    """``data.*``: the COCO folder (or generated scenes), LSJ, batch size."""

    PREFIX: ClassVar[str] = "data"
    dataset: str = "coco"  # coco | synthetic (generated scenes in the COCO layout, on the oracle backbone)
    root: str | None = None  # coco: the folder with train2017/, val2017/, annotations/; synthetic: where to write
    train_split: str = "train2017"
    val_split: str = "val2017"
    image_size: int = 1024  # LSJ crop side in training; test images are resized so that their longer side is this
    scale_range: tuple[float, float] = (0.1, 2.0)  # LSJ resize factors of the fitting scale
    flip: bool = True
    batch_size: int = 2  # images per process and step (ViTDet: 64 in total)
    num_workers: int | None = None  # null: the cores available
    synthetic_train_images: int = 256
    synthetic_val_images: int = 64
    synthetic_size: int = 128
    synthetic_seed: int = 0

    def check(self) -> None:
        _require(self.dataset in DATASETS, "data.dataset", f"one of {DATASETS}", self.dataset)
        for key in ("image_size", "batch_size", "synthetic_train_images", "synthetic_val_images"):
            _require(getattr(self, key) >= 1, f"data.{key}", "an integer >= 1", getattr(self, key))
        _require(self.synthetic_size >= 32, "data.synthetic_size", "an integer >= 32", self.synthetic_size)
        low, high = self.scale_range
        _require(0 < low <= high, "data.scale_range", "two factors 0 < low <= high", list(self.scale_range))
        _require(self.num_workers is None or self.num_workers >= 0, "data.num_workers", "an integer >= 0 or null",
                 self.num_workers)


@dataclass
class DetectorModel(Section):
    """``model.*``: the pyramid's upsampler, the heads, what is frozen, and the detector's sizes."""

    PREFIX: ClassVar[str] = "model"
    pyramid: str = TCONV  # tconv (ViTDet's) | bilinear | any registered upsampler | an upsampler checkpoint
    heads: str = "vitdet"  # vitdet (RPN 2 convs, 4conv1fc, mask head with LN) | torchvision (its lighter heads)
    freeze: str = "none"  # none (ViTDet fine-tunes the ViT) | backbone | backbone_upsampler (LiFT's step 3)
    out_channels: int = 256
    representation_size: int = 1024  # the box head's fc
    anchor_sizes: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)  # one per level, p2 ... p6
    rois_per_image: int = 512  # box-head samples per image in training
    proposals_per_image: int = 1000  # RPN proposals kept after NMS
    detections_per_image: int = 100
    allow_backbone_mismatch: bool = False  # an upsampler checkpoint trained on another backbone

    def check(self) -> None:
        _require(self.heads in HEADS, "model.heads", f"one of {HEADS}", self.heads)
        _require(self.freeze in FREEZE, "model.freeze", f"one of {FREEZE}", self.freeze)
        for key in ("out_channels", "representation_size", "rois_per_image", "proposals_per_image",
                    "detections_per_image"):
            _require(getattr(self, key) >= 1, f"model.{key}", "an integer >= 1", getattr(self, key))
        _require(all(s >= 1 for s in self.anchor_sizes), "model.anchor_sizes", "five sizes >= 1 pixel",
                 list(self.anchor_sizes))


@dataclass
class DetectionOptimizer(Section):
    """``optimizer.*``: AdamW with layer-wise lr decay, a linear warm-up and steps."""

    PREFIX: ClassVar[str] = "optimizer"
    lr: float = 1.0e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.1  # none on norms and position embeddings
    layer_decay: float = 0.7  # ViT block i's lr is lr * layer_decay ** (depth + 1 - (i + 1))
    warmup_steps: int = 250
    warmup_factor: float = 0.001  # the warm-up starts at lr * warmup_factor
    lr_steps: tuple[float, float] = (0.8889, 0.963)  # fractions of train.max_steps where the lr drops
    gamma: float = 0.1  # the factor of each drop

    def check(self) -> None:
        _require(self.lr > 0, "optimizer.lr", "positive", self.lr)
        _require(all(0 <= b < 1 for b in self.betas), "optimizer.betas", "two numbers in [0, 1)", list(self.betas))
        _require(self.weight_decay >= 0, "optimizer.weight_decay", "a number >= 0", self.weight_decay)
        _require(0 < self.layer_decay <= 1, "optimizer.layer_decay", "a number in (0, 1] (1: none)", self.layer_decay)
        _require(self.warmup_steps >= 0, "optimizer.warmup_steps", "an integer >= 0", self.warmup_steps)
        _require(0 < self.warmup_factor <= 1, "optimizer.warmup_factor", "a number in (0, 1]", self.warmup_factor)
        _require(all(0 <= f <= 1 for f in self.lr_steps), "optimizer.lr_steps", "fractions in [0, 1]",
                 list(self.lr_steps))
        _require(0 < self.gamma <= 1, "optimizer.gamma", "a number in (0, 1]", self.gamma)


@dataclass
class DetectionLoop(TrainLoop):
    """``train.*``: ViTDet's schedule length; checkpoints, logging, clipping as in train_wrc.py."""

    max_steps: int = VITDET_MAX_STEPS
    ckpt_every: int = 5000
    grad_clip: float = 0.0  # ViTDet does not clip
    evaluate: bool = True  # score the val split after the last step (metrics.json, predictions_*.json)
    eval_batch_size: int = 4
    max_eval_images: int | None = None  # the first N val images (null: all)

    def check(self) -> None:
        super().check()
        _require(self.eval_batch_size >= 1, "train.eval_batch_size", "an integer >= 1", self.eval_batch_size)
        _require(self.max_eval_images is None or self.max_eval_images >= 1, "train.max_eval_images",
                 "an integer >= 1 or null", self.max_eval_images)


@dataclass
class DetectionRun:
    """The whole config of ``python -m evaluation.detection.train``."""

    name: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU | fp32 | bf16
    run_dir: str | None = None
    resume: bool | str = False  # as train_wrc.py: true | auto | a run directory
    resume_allow_changes: bool = False
    init_from: str | None = None  # a detector checkpoint whose tensors are loaded where name and shape match
    backbone: dict[str, Any] | None = None  # the backbone group (ignored with data.dataset=synthetic: the oracle)
    data: DetectionData = field(default_factory=DetectionData)
    model: DetectorModel = field(default_factory=DetectorModel)
    optimizer: DetectionOptimizer = field(default_factory=DetectionOptimizer)
    train: DetectionLoop = field(default_factory=DetectionLoop)
    logger: Logger = field(default_factory=Logger)

    SECTIONS: ClassVar[dict[str, type[Section]]] = {
        "data": DetectionData, "model": DetectorModel, "optimizer": DetectionOptimizer, "train": DetectionLoop,
        "logger": Logger}

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> DetectionRun:
        values = _values(cls, config, "")
        for section, kind in cls.SECTIONS.items():
            values[section] = kind.from_mapping(config.get(section))
        settings = cls(**values)
        _require(settings.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", settings.precision)
        if settings.data.dataset == "coco" and settings.data.root is None:
            raise SettingsError("data.root is not set: pass data.root=/path/to/coco (with train2017/, val2017/ and "
                                "annotations/), or data.dataset=synthetic")
        return settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
