"""Train a ViTDet Mask R-CNN on a ViT and its simple feature pyramid: ``python -m evaluation.detection.train``.

LiFT's pipeline (section 3.5), one command per step (README):

    # (1) the baseline detector: ViTDet's recipe, transposed-conv pyramid, the ViT fine-tuned
    python -m evaluation.detection.train data.root=/data/coco backbone=dino_vits16
    # (2) an upsampler trained self-supervised on COCO images, on the detector's fine-tuned ViT
    python train_wrc.py model=lift backbone=dino_vits16 data.root=/data/coco/train2017 \
        backbone.weights=<run 1>/checkpoints/<step>/backbone.safetensors
    # (3) the upsampler inserted for p3/p2; backbone and upsampler frozen, the rest fine-tuned from (1)
    python -m evaluation.detection.train data.root=/data/coco backbone=dino_vits16 init_from=<run 1> \
        model.pyramid=<run 2> model.freeze=backbone_upsampler train.max_steps=20000
    # (4) COCO box and mask AP
    python -m evaluation protocol=detection protocol.root=/data/coco protocol.detector=<run 3> \
        backbone=dino_vits16 checkpoint=<run 2>

``model.freeze``: ``none`` fine-tunes everything (ViTDet; the ViT with layer-wise lr decay), ``backbone`` keeps
the ViT frozen, ``backbone_upsampler`` also the upsampler (the transposed convolutions with ``tconv``): only the
pyramid's projections, the RPN and the ROI heads train. ``init_from`` loads every tensor of a detector checkpoint
whose name and shape match (the p3/p2 projections of a transposed-conv detector do not fit an upsampler's C
channels and start fresh; the skipped names are logged).

Resuming is as in train_wrc.py (``resume=true|auto|<run dir>``, a resume that changes the losses is refused,
the run directory is locked, checkpoints are atomic): the data order is a pure function of (seed, step), LSJ
draws come from each sample's seed, and checkpoints hold the optimizer, scheduler and RNG states, so a killed run
resumes with the losses it would have had. Under torchrun every process trains (DistributedDataParallel, a
rank-aware sampler); rank 0 logs, writes checkpoints and evaluates. After the last step the val split is scored
(``metrics.json``; ``predictions_bbox.json`` and ``predictions_segm.json`` beside it).
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from evaluation.detection import checkpoint as ckpt
from evaluation.detection.coco import CategoryMap, CocoInstances, LargeScaleJitter, collate
from evaluation.detection.inference import evaluate_detector
from evaluation.detection.model import TCONV, LayerNorm2d, build_detector
from evaluation.detection.settings import DetectionOptimizer, DetectionRun, DetectorModel
from evaluation.synthetic.detection import write_synthetic_coco
from evaluation.synthetic.oracle import OracleBackbone
from wrc.build import build_backbone
from wrc.checkpoint import atomic_write_text, clean_interrupted_writes
from wrc.data import ResumableSampler
from wrc.distributed import DistributedContext, init_distributed
from wrc.extractor import resolve_upsampler
from wrc.provenance import code_version
from wrc.run_lock import RunLock
from wrc.run_logger import RunLogger, read_metrics, truncate_metrics
from wrc.training import (
    NonFiniteLossError,
    loader_workers,
    resolve_run_dir,
    resume_changes,
    rng_state,
    seed_everything,
    set_rng_state,
)
from wrc.upsamplers import Upsampler

log = logging.getLogger("wrc")
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, LayerNorm2d)
NO_DECAY_NAMES = ("pos_embed",)
SYNTHETIC_SPLITS = ("train2017", "val2017")


@dataclass
class DetectorRun:
    run_dir: Path
    checkpoint: Path
    detector: nn.Module
    categories: CategoryMap
    step: int
    is_main: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None


def oracle_backbone() -> OracleBackbone:
    """The synthetic scenes' oracle with patch 16, so its tokens are the pyramid's stride-16 map as they are."""
    return OracleBackbone(patch_size=16)


def upsampler_spec(upsampler: Upsampler | None) -> dict[str, Any] | None:
    """What a record says about an upsampler (as DenseFeatureExtractor.upsampler_spec); None for tconv."""
    if upsampler is None:
        return None
    source = getattr(upsampler, "source", {})
    return {"name": upsampler.name, "kwargs": dict(upsampler.init_kwargs), "checkpoint": source.get("checkpoint"),
            "step": source.get("step")}


def make_detector(model: DetectorModel, backbone: nn.Module, categories: CategoryMap, image_size: int,
                  upsampler: Upsampler | None = None) -> nn.Module:
    """The detector ``model`` describes, on ``backbone``; ``upsampler`` replaces the one ``model.pyramid`` names."""
    if upsampler is None and model.pyramid != TCONV:
        upsampler = resolve_upsampler(model.pyramid, backbone, allow_backbone_mismatch=model.allow_backbone_mismatch)
    detector = build_detector(
        backbone, upsampler, categories.num_classes, heads=model.heads, image_size=image_size,
        anchor_sizes=model.anchor_sizes, out_channels=model.out_channels,
        representation_size=model.representation_size, train_backbone=model.freeze == "none",
        train_upsampler=model.freeze != "backbone_upsampler", rois_per_image=model.rois_per_image,
        proposals_per_image=model.proposals_per_image, detections_per_image=model.detections_per_image)
    if upsampler is None and model.freeze == "backbone_upsampler":  # the transposed convolutions are "the upsampler"
        pyramid = detector.backbone.pyramid
        for module in (pyramid.up2, pyramid.up4):
            module.requires_grad_(False)
    return detector


def vit_layer(name: str, depth: int) -> int:
    """ViTDet's layer id of a timm ViT parameter: 0 for embeddings and tokens, i + 1 for block i, depth + 1 after."""
    match = re.match(r"blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if name.startswith(("patch_embed", "pos_embed", "cls_token", "reg_token")):
        return 0
    return depth + 1


def param_groups(detector: nn.Module, settings: DetectionOptimizer) -> list[dict[str, Any]]:
    """AdamW groups: lr scaled by layer-wise decay in the ViT (1 elsewhere); no weight decay on norms and position
    embeddings."""
    norm_params = {id(p) for m in detector.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}
    vit = detector.backbone.vit
    depth = len(vit.model.blocks) if hasattr(vit, "model") else 0
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in detector.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0
        if name.startswith("backbone.vit.model."):
            scale = settings.layer_decay ** (depth + 1 - vit_layer(name.removeprefix("backbone.vit.model."), depth))
        decay = 0.0 if id(param) in norm_params or any(k in name for k in NO_DECAY_NAMES) else settings.weight_decay
        group = groups.setdefault((scale, decay), {"params": [], "lr": settings.lr * scale, "weight_decay": decay,
                                                   "lr_scale": scale})
        group["params"].append(param)
    return list(groups.values())


def lr_factor(step: int, max_steps: int, settings: DetectionOptimizer) -> float:
    """The lr multiplier after ``step`` optimiser steps: linear warm-up from ``warmup_factor``, then x``gamma`` at
    each fraction of ``lr_steps``."""
    drops = sum(step >= round(fraction * max_steps) for fraction in settings.lr_steps)
    warm = 1.0
    if step < settings.warmup_steps:
        alpha = step / settings.warmup_steps
        warm = settings.warmup_factor * (1 - alpha) + alpha
    return warm * settings.gamma**drops


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on CUDA with ``auto`` or ``bf16``; none on the CPU with ``auto`` (fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def datasets(settings: DetectionRun, run_dir: Path, ctx: DistributedContext) -> tuple[CocoInstances, CocoInstances]:
    data = settings.data
    root, train_split, val_split = data.root, data.train_split, data.val_split
    if data.dataset == "synthetic":
        root = Path(root) if root else run_dir / "synthetic_data"
        if ctx.is_main:
            write_synthetic_coco(root, data.synthetic_train_images, data.synthetic_val_images, data.synthetic_size,
                                 data.synthetic_seed)
        ctx.barrier()
        train_split, val_split = SYNTHETIC_SPLITS
    augment = LargeScaleJitter(data.image_size, data.scale_range, data.flip)
    train_set = CocoInstances(root, train_split, augment=augment, argument="data.root")
    val_set = CocoInstances(root, val_split, argument="data.root")
    train_set.categories.check_covers(val_set.categories, f"{val_set.annotations}")
    return train_set, val_set


def train_detector(config: dict[str, Any], *, backbone: nn.Module | None = None,
                   upsampler: Upsampler | None = None) -> DetectorRun:
    """Train the configured detector (module docstring); ``backbone`` and ``upsampler`` replace the configured
    ones (the detection protocol passes its extractor's)."""
    settings = DetectionRun.from_mapping(config)
    config = settings.to_dict()
    ctx = init_distributed(settings.device)
    run_dir, resume = ctx.from_main(resolve_run_dir(config))
    lock = RunLock(run_dir).acquire() if ctx.is_main else None
    try:
        if ctx.is_main:
            clean_interrupted_writes(run_dir / "checkpoints")
            clean_interrupted_writes(run_dir)
        return _train_in(run_dir, resume, settings, config, ctx, backbone, upsampler)
    finally:
        if lock is not None:
            lock.release()


def _train_in(run_dir: Path, resume: str, settings: DetectionRun, config: dict[str, Any], ctx: DistributedContext,
              backbone: nn.Module | None, upsampler: Upsampler | None) -> DetectorRun:
    checkpoints = run_dir / "checkpoints"
    found = ckpt.latest_checkpoint(checkpoints)
    last = found if resume != "no" else None
    if last is None and resume == "required":
        raise FileNotFoundError(f"resume was asked for, but {checkpoints} holds no detector checkpoint: pass "
                                "resume=false to start a new run, or resume=auto")
    if resume == "no" and found is not None:
        raise FileExistsError(f"run_dir {run_dir} already holds the checkpoints of a run: pass resume=true to "
                              "continue it, or choose another run_dir")
    if last is None and ctx.is_main:
        truncate_metrics(run_dir, 0)
    changes = resume_changes(run_dir, config, settings.resume_allow_changes) if last is not None else {}
    version = code_version()
    seed_everything(settings.seed + ctx.rank)
    train_set, val_set = datasets(settings, run_dir, ctx)
    if backbone is None:
        if settings.data.dataset == "synthetic":
            backbone = oracle_backbone()
        elif settings.backbone is None:
            raise ValueError("backbone is not set: pass backbone=<group option> (config/backbone/)")
        else:
            backbone = build_backbone(settings.backbone)
    backbone = backbone.to(ctx.device)
    detector = make_detector(settings.model, backbone, train_set.categories, settings.data.image_size, upsampler)
    detector.to(ctx.device)
    saved = {"vit": settings.model.freeze == "none",
             "upsampler": settings.model.freeze != "backbone_upsampler" and settings.model.pyramid != TCONV}
    if settings.init_from and last is None:
        loaded, skipped = ckpt.load_matching(detector, ckpt.read_weights(settings.init_from))
        for part, prefix in ckpt.PARTS.items():
            saved[part] = saved[part] or any(k.startswith(prefix) for k in loaded)
        log.info("init_from %s: %d tensors loaded, %d skipped (other names or shapes): %s", settings.init_from,
                 len(loaded), len(skipped), ", ".join(skipped[:8]) + (" ..." if len(skipped) > 8 else ""))
    max_steps = settings.train.max_steps
    optimizer = torch.optim.AdamW(param_groups(detector, settings.optimizer), lr=settings.optimizer.lr,
                                  betas=settings.optimizer.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, max_steps, settings.optimizer))
    start_step = 0
    if last is not None:
        meta = json.loads((last / ckpt.META).read_text())
        saved = meta["saved"]
        detector.load_state_dict(ckpt.read_weights(last), strict=False)
        state = ckpt.load_train_state(last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][ctx.rank])
        start_step = state["step"]
        if ctx.is_main:
            truncate_metrics(run_dir, start_step)
            log.info("resumed from %s at step %d", last, start_step)
    ctx.barrier()
    model: nn.Module = detector
    if ctx.enabled:
        if ctx.device.type == "cuda" and settings.train.sync_batchnorm:
            detector = nn.SyncBatchNorm.convert_sync_batchnorm(detector)
        model = DistributedDataParallel(detector, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
                                        find_unused_parameters=True)
    sampler = ResumableSampler(len(train_set), settings.data.batch_size, seed=settings.seed, rank=ctx.rank,
                               world_size=ctx.world_size, start_step=start_step)
    workers = loader_workers(settings.data.num_workers)
    loader = DataLoader(train_set, batch_size=settings.data.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(settings.seed))  # not the global RNG: resume is exact
    logger = RunLogger(run_dir, tensorboard=settings.logger.tensorboard, wandb=settings.logger.wandb,
                       wandb_project=settings.logger.wandb_project, wandb_mode=settings.logger.wandb_mode,
                       config=config, enabled=ctx.is_main)
    if ctx.is_main:
        if changes and last is not None and not (run_dir / f"config.{last.name}.json").exists():
            (run_dir / f"config.{last.name}.json").write_text((run_dir / "config.json").read_text())
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2, default=str))
    meta_base = {"backbone": backbone.spec(), "upsampler": upsampler_spec(detector.backbone.pyramid.upsampler),
                 "model": config["model"], "image_size": settings.data.image_size,
                 "categories": {"ids": list(train_set.categories.ids), "names": list(train_set.categories.names)},
                 "saved": saved, "config": config, "code_version": version}

    def checkpoint(step: int, metrics: dict[str, float]) -> Path:
        states = ctx.gather_objects(rng_state())
        path = checkpoints / f"step_{step:07d}"
        if ctx.is_main:
            train_state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "rng": states}
            ckpt.save(path, detector, {**meta_base, "step": step, "metrics": metrics}, train_state,
                      keep=settings.train.keep_checkpoints)
        ctx.barrier()
        return path

    autocast = autocast_for(settings.precision, ctx.device)
    loop = settings.train
    metrics: dict[str, float] = {}
    progress = tqdm(total=max_steps, initial=start_step, desc="train detector", disable=not ctx.is_main,
                    dynamic_ncols=True)
    model.train()
    data_iter = iter(loader)
    tick = time.perf_counter()
    trainable = [p for p in detector.parameters() if p.requires_grad]
    try:
        for step in range(start_step + 1, max_steps + 1):
            images, targets = next(data_iter)
            images = [image.to(ctx.device, non_blocking=True) for image in images]
            targets = [{k: v.to(ctx.device, non_blocking=True) for k, v in t.items()} for t in targets]
            with autocast:
                losses = model(images, targets)
            loss = sum(losses.values())
            if ctx.any_true(not torch.isfinite(loss).item()):
                raise NonFiniteLossError(f"the detector's loss is not finite at step {step} "
                                         f"({ {k: float(v) for k, v in losses.items()} }); try a lower optimizer.lr "
                                         "or train.grad_clip=1.0")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if loop.grad_clip > 0:
                nn.utils.clip_grad_norm_(trainable, loop.grad_clip)
            optimizer.step()
            scheduler.step()
            if step % loop.log_every == 0 or step == max_steps:
                elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                done = loop.log_every if step % loop.log_every == 0 else step % loop.log_every
                metrics = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()},
                           "lr": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_scale"],
                           "images_per_s": done * settings.data.batch_size * ctx.world_size / elapsed}
                logger.log(step, metrics)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}")
            progress.update(1)
            if step % loop.ckpt_every == 0 and step != max_steps:
                checkpoint(step, metrics)
        final = checkpoint(max_steps, metrics) if start_step < max_steps else last
    finally:
        progress.close()
        logger.close()
    result = DetectorRun(run_dir, final, detector, train_set.categories, max_steps, ctx.is_main,
                         read_metrics(run_dir) if ctx.is_main else [])
    if ctx.is_main and loop.evaluate:
        result.metrics = evaluate_detector(detector, val_set, run_dir, ctx.device, batch_size=loop.eval_batch_size,
                                           max_images=loop.max_eval_images, autocast=autocast)
        atomic_write_text(run_dir / "metrics.json", json.dumps({"step": max_steps, "split": val_set.split,
                                                                "metrics": result.metrics}, indent=2))
        log.info("val %s: box AP %s, mask AP %s", val_set.split, result.metrics["box_ap"], result.metrics["mask_ap"])
    return result


def main() -> None:
    """The Hydra entry point (config/detection/train.yaml); Hydra is imported only here. The project's config
    folder is put on Hydra's search path, so that ``backbone=`` takes the options of config/backbone/."""
    import sys

    import hydra
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from hydra_plugins.wrc_resolvers import config_dir, register_resolvers
    from wrc.distributed import shutdown_distributed

    register_resolvers()
    ConfigStore.instance().store(name="detection_run_settings", node=DetectionRun)

    sys.argv.insert(1, f"hydra.searchpath=[file://{config_dir()}]")

    @hydra.main(version_base="1.3", config_path=str(Path(config_dir()) / "detection"), config_name="train")
    def run(cfg) -> None:
        try:
            result = train_detector(OmegaConf.to_container(cfg, resolve=True))
        finally:
            shutdown_distributed()
        if result.is_main:
            print(f"   run_dir: {result.run_dir}\ncheckpoint: {result.checkpoint}")
            if result.metrics is not None:
                print(f"   metrics: {result.run_dir / 'metrics.json'}  (box AP {result.metrics['box_ap']}, "
                      f"mask AP {result.metrics['mask_ap']})")

    run()


if __name__ == "__main__":
    main()
