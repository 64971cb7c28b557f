"""Linear probes on frozen (backbone + upsampler) features: segmentation and depth, without Hydra.

``train_probe(config)`` runs the JAFAR/WRC protocol by default: images at ``dataset.size`` (short side
+ centre crop), features from the frozen backbone and upsampler at the label resolution (or the
upsampler's native size, whose logits are then resized bilinearly to the labels), a 1x1 convolution,
AdamW (lr 5e-4, weight decay 1e-5) with a cosine schedule stepped per iteration, 20 epochs, batch 4,
random horizontal flips. ``protocol="lowres"`` is FeatUp's: the probe is trained on the backbone's
low-resolution features (labels nearest-downsampled to the token grid) and applied unchanged to the
upsampled features for evaluation.

Flips are applied to the features and the labels (the frozen networks see each image once per epoch
unflipped), so the online path and the cached path (``cache_features``: the training set's features
stored once as a memory-mapped fp16 file) give the same result on a fixed seed.

Depth: a 256-bin head (bins uniform in [1e-3, 10] m; weights (ReLU(logits) + 0.1) normalised; depth =
sum p_k b_k), loss 10 SigLoss(0.85) + 0.5 gradient loss (probe3d), metrics of evaluation.metrics.

Output in ``run_dir``: result.json (one JSON per run, ARCHITECTURE.md), probe.pt, predictions.png, and
per-epoch checkpoints for resuming a killed run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from evaluation.datasets import DATASETS, IGNORE
from evaluation.metrics import ConfusionMatrix, DepthMetrics
from wrc.backbone import FrozenBackbone
from wrc.build import build_backbone
from wrc.checkpoint import load_upsampler
from wrc.upsamplers import Upsampler, create_upsampler

log = logging.getLogger("wrc")
PROTOCOLS = ("highres", "lowres")


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


def build_probe_upsampler(cfg: dict[str, Any], backbone: FrozenBackbone) -> Upsampler:
    """``{"checkpoint": path}`` (a trained run) or ``{"name": ..., **kwargs}`` (a registered method)."""
    cfg = dict(cfg)
    if cfg.get("checkpoint"):
        upsampler = load_upsampler(cfg["checkpoint"])
        if (upsampler.in_channels, upsampler.patch_size) != (backbone.embed_dim, backbone.patch_size):
            raise ValueError(f"model.checkpoint={cfg['checkpoint']} was trained for {upsampler.in_channels} channels "
                             f"and patch {upsampler.patch_size}; backbone {backbone.name} has "
                             f"{backbone.embed_dim} and {backbone.patch_size}")
        return upsampler
    name = cfg.pop("name")
    cfg.pop("checkpoint", None)
    return create_upsampler(name, backbone.embed_dim, backbone.patch_size, **cfg)


class WithIndex(torch.utils.data.Dataset):
    """Adds each item's dataset index (to look up cached features and per-image flips)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}


class FeatureSource:
    """Frozen features for a batch: low-res (for the lowres protocol's training) or upsampled."""

    def __init__(self, backbone: FrozenBackbone, upsampler: Upsampler, native_size: bool) -> None:
        self.backbone, self.upsampler, self.native_size = backbone, upsampler.eval(), native_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, upsampled: bool = True) -> torch.Tensor:
        low = self.backbone(images)
        if not upsampled:
            return low
        size = None if self.native_size else images.shape[-2:]
        return self.upsampler(low, images, output_size=size, backbone=self.backbone).float()


def cache_features(source: FeatureSource, loader: DataLoader, path: Path, upsampled: bool,
                   dtype: str = "float16") -> np.memmap:
    """The features of every training image, once, as a memory-mapped array (N, C, h, w) of ``dtype``."""
    arrays = None
    index = 0
    for batch in tqdm(loader, desc="cache features", leave=False):
        feats = source(batch["image"].to(next(source.backbone.buffers()).device), upsampled).cpu().numpy()
        if arrays is None:
            shape = (len(loader.dataset), *feats.shape[1:])
            arrays = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
        arrays[index : index + len(feats)] = feats
        index += len(feats)
    arrays.flush()
    return np.load(path, mmap_mode="r")


def train_probe(config: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one probe; returns the result record (also written to run_dir/result.json)."""
    run_dir = Path(config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    probe_cfg, data_cfg = config["probe"], config["dataset"]
    protocol = probe_cfg.get("protocol", "highres")
    if protocol not in PROTOCOLS:
        raise ValueError(f"probe.protocol={protocol!r}; expected one of {PROTOCOLS}")
    device = torch.device(config.get("device", "cpu") if config.get("device", "auto") != "auto"
                          else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(int(config.get("seed", 0)))

    kind = "depth" if data_cfg["name"] == "nyuv2" else "segmentation"
    loader_kwargs = {k: v for k, v in data_cfg.items()
                     if k not in ("name", "root", "train_split", "val_split", "num_workers")}
    if not data_cfg.get("root"):
        raise ValueError(f"dataset.root is not set: pass dataset.root=/path/to/{data_cfg['name']}")
    make = DATASETS[data_cfg["name"]]
    train_set = make(data_cfg["root"], data_cfg["train_split"], **loader_kwargs)
    val_set = make(data_cfg["root"], data_cfg["val_split"], **loader_kwargs)

    backbone = build_backbone(config["backbone"]).to(device)
    upsampler = build_probe_upsampler(config["model"], backbone).to(device)
    source = FeatureSource(backbone, upsampler, bool(probe_cfg.get("native_size", False)))
    channels = backbone.embed_dim
    head: nn.Module = nn.Conv2d(channels, train_set.num_classes, 1) if kind == "segmentation" else DepthHead(channels)
    head = head.to(device)
    existing = torch.load(run_dir / "probe_state.pt", weights_only=False) if (run_dir / "probe_state.pt").exists() \
        else None
    if existing is not None and existing["channels"] != channels:
        raise ValueError(f"{run_dir}/probe_state.pt holds a probe for {existing['channels']} channels, but "
                         f"the backbone gives {channels}: use another run_dir")

    batch_size, epochs = int(probe_cfg.get("batch_size", 4)), int(probe_cfg.get("epochs", 20))
    generator = torch.Generator().manual_seed(int(config.get("seed", 0)))
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=False,
                              num_workers=int(data_cfg.get("num_workers", 0)))
    cached = None
    upsampled_training = protocol == "highres"
    if probe_cfg.get("cache_features", False):
        cached = cache_features(source, train_loader, run_dir / "train_features.npy", upsampled_training,
                                probe_cfg.get("cache_dtype", "float16"))
    optimizer = torch.optim.AdamW(head.parameters(), lr=float(probe_cfg.get("lr", 5e-4)),
                                  weight_decay=float(probe_cfg.get("weight_decay", 1e-5)))
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    start_epoch = 0
    if existing is not None:
        head.load_state_dict(existing["head"])
        optimizer.load_state_dict(existing["optimizer"])
        scheduler.load_state_dict(existing["scheduler"])
        generator.set_state(existing["generator"])
        start_epoch = existing["epoch"]

    for epoch in range(start_epoch, epochs):
        order = torch.randperm(len(train_set), generator=generator).tolist()
        flips = torch.rand(len(train_set), generator=generator) < float(probe_cfg.get("flip_p", 0.5))
        head.train()
        loader = DataLoader(WithIndex(train_set), batch_size=batch_size, sampler=order,
                            num_workers=int(data_cfg.get("num_workers", 0)))
        bar = tqdm(loader, desc=f"probe epoch {epoch + 1}/{epochs}", leave=False)
        for batch in bar:
            indices = batch["index"]
            target = batch["label" if kind == "segmentation" else "depth"].to(device)
            if cached is not None:
                feats = torch.from_numpy(np.stack([cached[i] for i in indices.tolist()])).float().to(device)
            else:
                feats = source(batch["image"].to(device), upsampled_training)
            flip = flips[indices].to(device)
            feats = torch.where(flip[:, None, None, None], feats.flip(-1), feats)
            target = torch.where(flip[:, None, None], target.flip(-1), target)
            loss = probe_loss(head, feats, target, kind, protocol)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        torch.save({"epoch": epoch + 1, "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "channels": channels},
                   run_dir / "probe_state.pt")
        if probe_cfg.get("stop_after_epoch") is not None and epoch + 1 >= int(probe_cfg["stop_after_epoch"]) \
                and epoch + 1 < epochs:
            log.info("stopping after epoch %d of %d (probe.stop_after_epoch); run again to resume", epoch + 1, epochs)
            return {"completed": False, "epoch": epoch + 1, "run_dir": str(run_dir)}

    metrics, examples = evaluate_probe(head, source, val_set, kind, device)
    torch.save({"head": head.state_dict(), "kind": kind, "channels": channels,
                "num_classes": getattr(train_set, "num_classes", None)}, run_dir / "probe.pt")
    record = {
        "protocol": f"linear_probe_{kind}", "probe_protocol": protocol, "dataset": data_cfg["name"],
        "backbone": backbone.spec(), "model": config["model"], "image_size": data_cfg.get("size"),
        "epochs": epochs, "batch_size": batch_size, "seed": int(config.get("seed", 0)), "metrics": metrics,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (run_dir / "result.json").write_text(json.dumps(record, indent=2))
    save_predictions(examples, kind, run_dir / "predictions.png")
    return record


def probe_loss(head: nn.Module, feats: torch.Tensor, target: torch.Tensor, kind: str, protocol: str) -> torch.Tensor:
    """Cross-entropy on labelled pixels, or the depth loss on valid pixels, at the target's resolution
    (``lowres``: the target nearest-downsampled to the feature grid instead)."""
    out = head(feats)
    if protocol == "lowres":
        target = F.interpolate(target[:, None].float(), size=out.shape[-2:], mode="nearest")[:, 0]
        target = target.long() if kind == "segmentation" else target
    elif out.shape[-2:] != target.shape[-2:]:
        out = F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if kind == "segmentation":
        valid = target != IGNORE
        if valid.any() and (target[valid].min() < 0 or target[valid].max() >= out.shape[1]):
            raise ValueError(f"labels out of range: expected 0..{out.shape[1] - 1} or {IGNORE} (ignore); got "
                             f"{target[valid].unique()[:8].tolist()}")
        logits = out.permute(0, 2, 3, 1)[valid]
        return F.cross_entropy(logits, target[valid]) if valid.any() else out.sum() * 0
    valid = (target > 1e-3) & (target <= 10)
    pred = out[:, 0]
    return 10 * sig_loss(pred, target, valid) + 0.5 * gradient_loss(pred, target, valid)


@torch.no_grad()
def evaluate_probe(head: nn.Module, source: FeatureSource, dataset, kind: str, device: torch.device,
                   examples: int = 3) -> tuple[dict, list]:
    """Metrics over the whole split (upsampled features, predictions resized to the labels)."""
    head.eval()
    confusion = ConfusionMatrix(dataset.num_classes) if kind == "segmentation" else None
    depth = DepthMetrics() if kind == "depth" else None
    shown = []
    for index in tqdm(range(len(dataset)), desc="probe eval", leave=False):
        item = dataset[index]
        out = head(source(item["image"][None].to(device)))
        target = item["label" if kind == "segmentation" else "depth"].to(device)
        out = F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)
        pred = out.argmax(dim=1)[0] if kind == "segmentation" else out[0, 0]
        if confusion is not None:
            confusion.update(pred, target)
        else:
            depth.update(pred, target)
        if len(shown) < examples:
            shown.append((item["image"], target.cpu(), pred.cpu()))
    return (confusion.compute() if confusion is not None else depth.compute()), shown


def save_predictions(examples: list, kind: str, path: Path) -> None:
    """Image | label | prediction rows (labels coloured by a fixed random palette, depth in grey)."""
    from PIL import Image

    palette = np.random.default_rng(0).integers(0, 255, (256, 3), dtype=np.uint8)
    palette[IGNORE] = 0
    rows = []
    for image, target, pred in examples:
        picture = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        if kind == "segmentation":
            panels = [palette[target.numpy().clip(0, 255)], palette[pred.numpy().clip(0, 255)]]
        else:
            scale = max(float(target.max()), 1e-6)
            panels = [np.repeat((t.numpy() / scale * 255).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
                      for t in (target, pred)]
        rows.append(np.concatenate([picture, *panels], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
