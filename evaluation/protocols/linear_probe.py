"""Linear probes on frozen (backbone + upsampler) features: semantic segmentation and monocular depth.

The JAFAR/WRC protocol by default (``mode="highres"``): images at ``dataset.size`` (short side + centre
crop), features upsampled to the label resolution (or the upsampler's native size with
``native_size``, whose logits are then resized bilinearly to the labels), a 1x1 convolution, AdamW
(lr 5e-4, weight decay 1e-5) with a cosine schedule stepped per iteration, 20 epochs, batch 4, random
horizontal flips. ``mode="lowres"`` is FeatUp's: the probe is trained on the backbone's low-resolution
features (labels nearest-downsampled to the token grid) and applied unchanged to the upsampled features.

Flips are applied to the features and the labels (the frozen networks see each image once per epoch
unflipped), so the online path and the cached path (``cache_features``: the training set's features
stored once as a memory-mapped file) give the same result on a fixed seed.

Depth: a 256-bin head (bins uniform in [1e-3, 10] m; weights (ReLU(logits) + 0.1) normalised; depth =
sum p_k b_k), loss 10 SigLoss(0.85) + 0.5 gradient loss (probe3d), metrics of evaluation.metrics.

Output in ``run_dir``: result.json, probe.pt, predictions.png, and ``probe_state.pt`` after every epoch,
from which a killed run resumes.

    python -m evaluation protocol=probe_segmentation dataset=voc2012 dataset.root=/data/voc model=bilinear
    python -m evaluation protocol=probe_depth dataset=nyuv2 dataset.root=/data/nyu checkpoint=outputs/<run>
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from evaluation.datasets import DATASETS, IGNORE
from evaluation.heads import HeadTrainer
from evaluation.metrics import ConfusionMatrix, DepthMetrics
from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol
from evaluation.run_identity import refuse_another_run
from wrc import provenance
from wrc.checkpoint import atomic_torch_save
from wrc.extractor import DenseFeatureExtractor
from wrc.settings import require_at_least_one

log = logging.getLogger("wrc")
MODES = ("highres", "lowres")
DATASET_LOADER_KEYS = ("name", "root", "train_split", "val_split", "num_workers")  # not passed to the loader
RESUME_IDENTITY = ("mode", "epochs", "batch_size", "lr", "weight_decay", "flip_p", "native_size", "seed")


@dataclass
class ProbeSettings:
    dataset: dict[str, Any] | None = None  # a config/dataset/ node: name, root, train_split, val_split, size, ...
    mode: str = "highres"  # highres (JAFAR/WRC: train on upsampled features) | lowres (FeatUp: train on low-res)
    epochs: int = 20
    batch_size: int = 4
    lr: float = 5.0e-4
    weight_decay: float = 1.0e-5
    flip_p: float = 0.5  # horizontal flips of features and labels
    native_size: bool = False  # features at the upsampler's own size, logits resized to the labels
    cache_features: bool = False  # store the training set's features once (memory-mapped), reused every epoch
    cache_dtype: str = "float16"  # float16 halves the file; float32 reproduces the online path exactly
    stop_after_epoch: int | None = None  # stop (checkpointed) after this epoch; the same command resumes
    seed: int = 0
    examples: int = 3  # validation images drawn in predictions.png

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"protocol.mode={self.mode!r}; expected one of {MODES}")
        require_at_least_one(self, "protocol", "epochs", "batch_size")
        if not self.lr > 0:
            raise ValueError(f"protocol.lr must be > 0; got {self.lr}")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError(f"protocol.cache_dtype={self.cache_dtype!r}; expected 'float16' or 'float32'")


class DepthHead(nn.Module):
    """1x1 convolution to ``bins`` logits; depth = sum_k p_k b_k with p = (ReLU + 0.1) normalised."""

    def __init__(self, channels: int, bins: int = 256, min_depth: float = 1e-3, max_depth: float = 10.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, bins, 1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, bins).view(1, bins, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = F.relu(self.conv(features)) + 0.1
        return (weights / weights.sum(dim=1, keepdim=True) * self.centres).sum(dim=1, keepdim=True)


def sig_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    g = torch.log(pred[valid] + 1e-3) - torch.log(gt[valid] + 1e-3)
    return torch.sqrt((g.square().mean() - lam * g.mean().square()).clamp_min(1e-12))


def gradient_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """probe3d's multi-scale gradient matching of the log error, over H and W (4 scales)."""
    total = pred.new_zeros(())
    for step in (1, 2, 4, 6):
        p, g, m = pred[..., ::step, ::step], gt[..., ::step, ::step], valid[..., ::step, ::step].float()
        diff = (torch.log(p + 1e-3) - torch.log(g + 1e-3)) * m
        dy = (diff[..., 2:, :] - diff[..., :-2, :]).abs() * m[..., 2:, :] * m[..., :-2, :]
        dx = (diff[..., :, 2:] - diff[..., :, :-2]).abs() * m[..., :, 2:] * m[..., :, :-2]
        total = total + (dy.sum() + dx.sum()) / m.sum().clamp_min(1)
    return total


class WithIndex(Dataset):
    """Adds each item's dataset index (to look up cached features and per-image flips)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}


class FeatureSource:
    """Frozen features for a batch: the backbone's tokens (lowres training) or the extractor's upsampled ones."""

    def __init__(self, extractor: DenseFeatureExtractor, native_size: bool) -> None:
        self.extractor, self.native_size = extractor, native_size
        self.device = extractor.device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, upsampled: bool = True) -> torch.Tensor:
        images = images.to(self.device)
        tokens = self.extractor.tokens(images)
        if not upsampled:
            return tokens
        return self.extractor.upsample(tokens, images, None if self.native_size else images.shape[-2:]).float()


def cache_features(source: FeatureSource, loader: DataLoader, path: Path, upsampled: bool,
                   dtype: str = "float16") -> np.memmap:
    """The features of every training image, once, as a memory-mapped array (N, C, h, w) of ``dtype``."""
    arrays, index = None, 0
    for batch in tqdm(loader, desc="cache features", leave=False):
        feats = source(batch["image"], upsampled).cpu().numpy()
        if arrays is None:
            arrays = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype),
                                               shape=(len(loader.dataset), *feats.shape[1:]))
        arrays[index : index + len(feats)] = feats
        index += len(feats)
    arrays.flush()
    return np.load(path, mmap_mode="r")


def load_splits(spec: dict[str, Any] | None, task: str, protocol: str) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """(train set, validation set, the record's dataset entry) from a config/dataset/ node."""
    if not spec:
        raise ValueError(f"protocol={protocol} needs a {task} dataset: pass dataset=<name> dataset.root=/path "
                         f"(datasets: {', '.join(DATASETS)})")
    if spec.get("name") not in DATASETS:
        raise ValueError(f"unknown dataset.name={spec.get('name')!r}; expected one of {', '.join(DATASETS)}")
    if not spec.get("root"):
        raise ValueError(f"dataset.root is not set: pass dataset.root=/path/to/{spec['name']}")
    make = DATASETS[spec["name"]]
    options = {k: v for k, v in spec.items() if k not in DATASET_LOADER_KEYS}
    train_set = make(spec["root"], spec["train_split"], **options)
    val_set = make(spec["root"], spec["val_split"], **options)
    if train_set.kind != task:
        raise ValueError(f"protocol={protocol} needs a {task} dataset; dataset={spec['name']} is a {train_set.kind} "
                         f"dataset (use protocol=probe_{train_set.kind})")
    entry = {"name": spec["name"], "split": spec["val_split"], "train_split": spec["train_split"],
             "root": str(spec["root"]), "options": options}
    return train_set, val_set, entry


class LinearProbe(Protocol):
    """The shared machinery of both probes; ``task`` is ``segmentation`` or ``depth``."""

    Settings = ProbeSettings
    task: str = ""

    def make_head(self, channels: int, train_set: Dataset) -> nn.Module:
        raise NotImplementedError

    def target(self, batch: dict) -> torch.Tensor:
        return batch["label" if self.task == "segmentation" else "depth"]

    def run(self, extractor: DenseFeatureExtractor, settings: ProbeSettings, run_dir: Path) -> Evaluation:
        train_set, val_set, dataset = load_splits(settings.dataset, self.task, self.name)
        source = FeatureSource(extractor, settings.native_size)
        torch.manual_seed(settings.seed)
        head = self.make_head(extractor.backbone.embed_dim, train_set).to(source.device)
        identity = {"protocol": self.name, "upsampler": extractor.upsampler_spec(),
                    "dataset": dataset,
                    "channels": extractor.backbone.embed_dim, "backbone": extractor.backbone.spec(),
                    "training": {k: v for k, v in dataclasses.asdict(settings).items() if k in RESUME_IDENTITY},
                    # as in every resumable protocol (evaluation.run_identity): an upsampler trained in memory is told
                    # apart by its weights, and a probe of other code is never resumed
                    "weights": provenance.weights_digest(getattr(extractor, "upsampler", None)),
                    "code": provenance.code_identity()}
        if not self.train(head, source, train_set, settings, run_dir, identity):
            return Evaluation(metrics={}, dataset=dataset, completed=False)
        metrics, per_item, examples = self.evaluate_head(head, source, val_set, settings.examples)
        atomic_torch_save({"head": head.state_dict(), "task": self.task, "channels": identity["channels"],
                           "num_classes": getattr(train_set, "num_classes", None)}, run_dir / "probe.pt")
        save_predictions(examples, self.task, run_dir / "predictions.png")
        resolution = {"image_size": settings.dataset.get("size"), "native_size": settings.native_size,
                      "mode": settings.mode, "size_policy": extractor.backbone.spec().get("size_policy")}
        return Evaluation(metrics=metrics, dataset=dataset, resolution=resolution, per_item=per_item)

    def train(self, head: nn.Module, source: FeatureSource, train_set: Dataset, settings: ProbeSettings,
              run_dir: Path, identity: dict[str, Any]) -> bool:
        """Train for the remaining epochs (resuming from probe_state.pt); False when stopped early on purpose."""
        workers = int(settings.dataset.get("num_workers", 0))
        steps_per_epoch = -(-len(train_set) // settings.batch_size)
        trainer = HeadTrainer(head, lr=settings.lr, weight_decay=settings.weight_decay,
                              total_steps=settings.epochs * steps_per_epoch)
        generator = torch.Generator().manual_seed(settings.seed)
        start_epoch = resume_probe(run_dir / "probe_state.pt", head, trainer, generator, identity)
        cached = None
        upsampled = settings.mode == "highres"
        if settings.cache_features:
            loader = DataLoader(train_set, batch_size=settings.batch_size, shuffle=False, num_workers=workers)
            cached = cache_features(source, loader, run_dir / "train_features.npy", upsampled, settings.cache_dtype)
        for epoch in range(start_epoch, settings.epochs):
            order = torch.randperm(len(train_set), generator=generator).tolist()
            flips = torch.rand(len(train_set), generator=generator) < settings.flip_p
            head.train()
            loader = DataLoader(WithIndex(train_set), batch_size=settings.batch_size, sampler=order,
                                num_workers=workers)
            bar = tqdm(loader, desc=f"probe epoch {epoch + 1}/{settings.epochs}", leave=False)
            for batch in bar:
                indices = batch["index"]
                target = self.target(batch).to(source.device)
                if cached is not None:
                    feats = torch.from_numpy(np.stack([cached[i] for i in indices.tolist()])).float()
                    feats = feats.to(source.device)
                else:
                    feats = source(batch["image"], upsampled)
                flip = flips[indices].to(source.device)
                feats = torch.where(flip[:, None, None, None], feats.flip(-1), feats)
                target = torch.where(flip[:, None, None], target.flip(-1), target)
                loss = self.loss(head(feats), target, settings.mode)
                trainer.step(loss)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            atomic_torch_save({"epoch": epoch + 1, "head": head.state_dict(), **trainer.state_dict(),
                               "generator": generator.get_state(), "identity": identity}, run_dir / "probe_state.pt")
            if settings.stop_after_epoch is not None and settings.stop_after_epoch <= epoch + 1 < settings.epochs:
                log.info("stopping after epoch %d of %d (protocol.stop_after_epoch); run again to resume",
                         epoch + 1, settings.epochs)
                return False
        return True

    def loss(self, out: torch.Tensor, target: torch.Tensor, mode: str) -> torch.Tensor:
        """The loss at the target's resolution (``lowres``: the target nearest-downsampled to the feature grid)."""
        if mode == "lowres":
            target = F.interpolate(target[:, None].float(), size=out.shape[-2:], mode="nearest")[:, 0]
            target = target.long() if self.task == "segmentation" else target
        elif out.shape[-2:] != target.shape[-2:]:
            out = F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return self.task_loss(out, target)

    def task_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate_head(self, head: nn.Module, source: FeatureSource, dataset: Dataset,
                      examples: int) -> tuple[dict[str, Any], dict[str, Any], list]:
        """Metrics over the whole split (upsampled features, predictions resized to the labels)."""
        head.eval()
        meter = self.meter(dataset)
        shown = []
        for index in tqdm(range(len(dataset)), desc="probe eval", leave=False):
            item = dataset[index]
            out = head(source(item["image"][None]))
            target = self.target(item).to(source.device)
            out = F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = out.argmax(dim=1)[0] if self.task == "segmentation" else out[0, 0]
            meter.update(pred, target)
            if len(shown) < examples:
                shown.append((item["image"], target.cpu(), pred.cpu()))
        metrics = meter.compute()
        per_item = {"per_class_iou": metrics.pop("per_class_iou")} if "per_class_iou" in metrics else {}
        return metrics, per_item, shown

    def meter(self, dataset: Dataset) -> ConfusionMatrix | DepthMetrics:
        raise NotImplementedError


def resume_probe(path: Path, head: nn.Module, trainer: HeadTrainer, generator: torch.Generator,
                 identity: dict[str, Any]) -> int:
    """Load ``probe_state.pt`` when it exists and belongs to this run; returns the epoch to start from."""
    if not path.exists():
        return 0
    try:
        state = torch.load(path, weights_only=False)
    except Exception as err:  # written atomically since schema 1; an older torn file must not block the rerun
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); delete it to start the probe over") \
            from None
    saved = state.get("identity", {"channels": state.get("channels")})
    refuse_another_run(saved, identity, f"{path} holds a probe",
                       "use another run_dir, or delete the file to start over")
    head.load_state_dict(state["head"])
    trainer.load_state_dict(state)
    generator.set_state(state["generator"])
    log.info("resumed the probe from %s after epoch %d", path, state["epoch"])
    return int(state["epoch"])


@register_protocol
class SegmentationProbe(LinearProbe):
    name, task = "probe_segmentation", "segmentation"
    table = TableSpec(
        columns=(Column("miou", percent=True), Column("pixel_accuracy", percent=True),
                 Column("mean_class_accuracy", percent=True), Column("valid_pixels", unit="count")),
        headline=("miou",),
    )

    def make_head(self, channels: int, train_set: Dataset) -> nn.Module:
        return nn.Conv2d(channels, train_set.num_classes, 1)

    def task_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE
        if valid.any() and (target[valid].min() < 0 or target[valid].max() >= out.shape[1]):
            raise ValueError(f"labels out of range: expected 0..{out.shape[1] - 1} or {IGNORE} (ignore); got "
                             f"{target[valid].unique()[:8].tolist()}")
        logits = out.permute(0, 2, 3, 1)[valid]
        return F.cross_entropy(logits, target[valid]) if valid.any() else out.sum() * 0

    def meter(self, dataset: Dataset) -> ConfusionMatrix:
        return ConfusionMatrix(dataset.num_classes)


@register_protocol
class DepthProbe(LinearProbe):
    name, task = "probe_depth", "depth"
    table = TableSpec(
        columns=(Column("d1", percent=True), Column("d2", percent=True), Column("d3", percent=True),
                 Column("abs_rel", higher_is_better=False), Column("sq_rel", higher_is_better=False),
                 Column("rmse", higher_is_better=False, unit="m"), Column("rmse_log", higher_is_better=False),
                 Column("log10", higher_is_better=False), Column("silog", higher_is_better=False),
                 Column("images", unit="count")),
        headline=("d1", "rmse"),
    )

    def make_head(self, channels: int, train_set: Dataset) -> nn.Module:
        return DepthHead(channels)

    def task_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = (target > 1e-3) & (target <= 10)
        pred = out[:, 0]
        return 10 * sig_loss(pred, target, valid) + 0.5 * gradient_loss(pred, target, valid)

    def meter(self, dataset: Dataset) -> DepthMetrics:
        return DepthMetrics()


def save_predictions(examples: list, task: str, path: Path) -> None:
    """Image | label | prediction rows (labels coloured by a fixed random palette, depth in grey)."""
    from PIL import Image

    if not examples:
        return
    palette = np.random.default_rng(0).integers(0, 255, (256, 3), dtype=np.uint8)
    palette[IGNORE] = 0
    rows = []
    for image, target, pred in examples:
        picture = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        if task == "segmentation":
            panels = [palette[target.numpy().clip(0, 255)], palette[pred.numpy().clip(0, 255)]]
        else:
            scale = max(float(target.max()), 1e-6)
            panels = [np.repeat((t.numpy() / scale * 255).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
                      for t in (target, pred)]
        rows.append(np.concatenate([picture, *panels], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
