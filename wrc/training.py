"""train(config): the whole training loop, top to bottom, with no Hydra in sight.

``config`` is a plain nested dict with the groups backbone, model, objective, data, optimizer and the
keys seed, device, precision, run_dir, resume, train and logger; ``wrc.settings.RunSettings`` holds their
defaults (config/train.yaml takes its own from there) and checks them all before anything is built. Under
torchrun every process calls ``train``; rank 0 alone logs and writes checkpoints.

Resuming is exact: the data order is a pure function of (seed, step) (``ResumableSampler``), crops
are seeded per sample, and checkpoints hold the optimizer, scheduler and every rank's RNG states, so a
run killed at any point and resumed produces the same losses as one that never stopped. A resume whose
config changes anything that shapes the losses (``wrc.settings.config_changes``) is refused, listing the
changes, unless ``resume_allow_changes=true``; then the run's old config.json is kept beside the new one.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from wrc.backbone import PRECISIONS, FrozenBackbone
from wrc.build import build_backbone, build_objective, build_optimizer, build_upsampler
from wrc.checkpoint import (
    atomic_write_text,
    clean_interrupted_writes,
    latest_checkpoint,
    load_train_state,
    save_checkpoint,
)
from wrc.data import ResumableSampler, build_dataset, stack_batch
from wrc.distributed import DistributedContext, init_distributed
from wrc.objectives import Objective
from wrc.provenance import code_version, command_line
from wrc.run_lock import RunLock
from wrc.run_logger import RunLogger, read_metrics, truncate_metrics
from wrc.settings import RunSettings, SettingsError, config_changes
from wrc.upsamplers import Upsampler

log = logging.getLogger("wrc")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says at which step and what to try."""


class ResumeConfigError(SettingsError):
    """A resume would change settings that shape the losses; the message lists each with its old and new value."""


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    backbone: FrozenBackbone
    upsampler: Upsampler
    step: int
    is_main: bool = True  # False on non-zero ranks, which write nothing
    history: list[dict[str, Any]] = field(default_factory=list)


class TrainStep(nn.Module):
    """Upsampler + objective as one module, so DDP sees one forward per optimisation step.

    The frozen backbone is held outside the module tree: DDP must neither broadcast nor reduce it.
    """

    def __init__(self, backbone: FrozenBackbone, upsampler: Upsampler, objective: Objective) -> None:
        super().__init__()
        self.upsampler, self.objective = upsampler, objective
        self._backbone = (backbone,)

    def forward(self, images: torch.Tensor, **extras: torch.Tensor) -> dict[str, torch.Tensor]:
        """``extras``: what the data delivers beside the images (``masks``) for objectives that take it."""
        return self.objective(self._backbone[0], self.upsampler, images, **extras)


DATA_EXTRAS = ("masks",)  # per-image tensors a dataset may deliver beside the images, passed to the objective


def check_data_extras(dataset: object, objective: Objective) -> None:
    """Masks from the data need an objective that takes them, and an objective with a mask term needs masks: said
    before training starts, not as an error from inside the first step."""
    delivers = bool(getattr(dataset, "delivers_masks", False))
    takes = "masks" in inspect.signature(objective.forward).parameters
    if delivers and not takes:
        raise ValueError(f"the data delivers masks (data.masks_root is set, or a dataset built with masks) but "
                         f"objective={objective.name} takes none (LoftUp's loftup_stage1 and loftup_stage2 do): unset "
                         "data.masks_root or choose one of those")
    if getattr(objective, "uses_masks", False) and not delivers:
        raise ValueError(f"objective={objective.name} has a mask term (objective.mask_weight > 0) but the data "
                         "delivers no masks: pass data.masks_root=<folder of SA-1B mask JSONs mirroring data.root> "
                         "(data=image_folder), or objective.mask_weight=0")
    if delivers and takes and not getattr(objective, "uses_masks", True):
        log.warning("the data delivers masks but objective.mask_weight is 0: the masks are loaded and not used")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_run_dir(config: dict[str, Any]) -> tuple[Path, str]:
    """(run directory, resume mode). ``resume`` may be false (a new run: ``"no"``), true (continue the checkpoints
    of run_dir; there must be one: ``"required"``), ``auto`` (continue when there is a checkpoint, start fresh
    otherwise: ``"auto"``) or a run directory to continue (``"required"``)."""
    resume = config.get("resume", False)
    text = str(resume).lower()
    if isinstance(resume, str) and text not in ("true", "false", "auto"):
        run_dir = Path(resume)
        if not (run_dir / "checkpoints").is_dir():
            raise FileNotFoundError(f"resume={resume!r} is not a run directory with a checkpoints/ folder")
        return run_dir, "required"
    if config.get("run_dir") is None:
        raise ValueError("run_dir is not set: pass run_dir=/path/for/outputs")
    return Path(config["run_dir"]), {"true": "required", "auto": "auto"}.get(text, "no")


def available_cpus() -> int:
    """The cores this process may run on: its CPU affinity (taskset, Slurm, containers) where the OS reports it."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(num_workers: int | None) -> int:
    """``data.num_workers``; null (the default) means the cores available, shared by the processes torchrun
    starts on this node, so a machine of any size is used without oversubscribing it."""
    if num_workers is not None:
        return int(num_workers)
    return max(1, available_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast, on the CPU as on GPUs (small fp16 gradients underflow to zero without it);
    a disabled scaler, which passes everything through, for fp32 and bf16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def resume_changes(run_dir: Path, config: dict[str, Any], allow: bool) -> dict[str, tuple[Any, Any]]:
    """The settings this resume changes against the run's config.json; a ``ResumeConfigError`` listing them
    unless ``allow``. A longer or shorter ``train.max_steps`` is allowed with a warning (the schedule follows it). A
    missing or unreadable config.json is warned about, never fatal."""
    saved = run_dir / "config.json"
    try:
        previous = json.loads(saved.read_text())
    except (OSError, ValueError) as err:
        log.warning("cannot read %s (%s): the resumed run's configuration is not checked", saved, err)
        return {}
    before = (previous.get("train") or {}).get("max_steps")
    if before is not None and before != config["train"]["max_steps"]:  # may change, but not unnoticed
        log.warning("train.max_steps changes from %s to %s on resume: the learning-rate schedule from here on follows "
                    "the new length, so the run will not equal one trained for %s steps from the start",
                    before, config["train"]["max_steps"], config["train"]["max_steps"])
    changes = config_changes(previous, config)
    if changes and not allow:
        lines = "\n".join(f"  {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        raise ResumeConfigError(
            f"resuming {run_dir} with settings that differ from its config.json (old -> new):\n{lines}\n"
            "resume with the run's settings, or pass resume_allow_changes=true to continue with the new ones "
            "(the old config.json is then kept as config.<checkpoint>.json)"
        )
    return changes


def make_loader(config: dict[str, Any], dataset: Dataset, ctx: DistributedContext, start_step: int) -> DataLoader:
    data = config["data"]
    sampler = ResumableSampler(len(dataset), data["batch_size"], seed=config["seed"], rank=ctx.rank,
                               world_size=ctx.world_size, start_step=start_step)
    workers = loader_workers(data.get("num_workers"))
    return DataLoader(dataset, batch_size=data["batch_size"], sampler=sampler, num_workers=workers,
                      collate_fn=stack_batch, pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(config["seed"]))


def train(config: dict[str, Any], *, backbone: nn.Module | None = None, dataset: Dataset | None = None) -> TrainResult:
    """Train the configured upsampler; returns where its run directory and final checkpoint are.

    ``backbone`` and ``dataset`` replace the ones the config would build: any frozen module with
    ``embed_dim``, ``patch_size``, ``spec()`` and ``forward(images)`` (e.g. the synthetic benchmark's
    oracle), and any dataset following ``wrc.data``'s item contract.

    Every setting is checked first (``wrc.settings``): an unknown key or a value the loop cannot run with is a
    ``SettingsError`` naming the key, before any download, model or file.
    """
    settings = RunSettings.from_mapping(config)
    if backbone is None and settings.backbone is None:
        raise SettingsError("backbone must be a mapping with a 'name' key (its config group), or pass train(backbone=)")
    config = settings.to_dict()  # what runs, every default filled in: config.json and checkpoints record this
    ctx = init_distributed(settings.device)
    run_dir, resume = ctx.from_main(resolve_run_dir(config))  # Hydra names each rank's dir on its own clock
    lock = RunLock(run_dir).acquire() if ctx.is_main else None  # a second run into run_dir fails here, clearly
    try:
        if ctx.is_main:
            for leftover in [*clean_interrupted_writes(run_dir / "checkpoints"), *clean_interrupted_writes(run_dir)]:
                log.info("removed %s, left by an interrupted write", leftover)
        return _train_in(run_dir, resume, settings, config, ctx, backbone, dataset)
    finally:
        if lock is not None:
            lock.release()


def _train_in(run_dir: Path, resume: str, settings: RunSettings, config: dict[str, Any], ctx: DistributedContext,
              backbone: nn.Module | None, dataset: Dataset | None) -> TrainResult:
    """The loop of ``train``, run while the run directory is locked."""
    train_cfg = settings.train
    checkpoints = run_dir / "checkpoints"
    found = latest_checkpoint(checkpoints)
    last = found if resume != "no" else None
    if last is None and resume == "required":
        raise FileNotFoundError(
            f"resume was asked for, but {checkpoints} holds no checkpoint: pass resume=false to start a new run, "
            "or resume=auto to continue when there is a checkpoint and start fresh otherwise"
        )
    if resume == "no" and found is not None:
        raise FileExistsError(
            f"run_dir {run_dir} already holds the checkpoints of a run: pass resume=true to continue it, or choose "
            "another run_dir (a new run would overwrite them)"
        )
    if last is None and ctx.is_main:
        truncate_metrics(run_dir, 0)  # a fresh start keeps no log lines of an earlier attempt
    changes = resume_changes(run_dir, config, settings.resume_allow_changes) if last is not None else {}
    if changes:
        log.warning("resuming with changed settings (resume_allow_changes=true): %s",
                    "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()))
    max_steps = train_cfg.max_steps
    version = code_version()  # the code this process runs, whatever the checkout becomes meanwhile
    command = command_line()  # as typed: the model card of a pushed checkpoint shows it
    seed_everything(settings.seed + ctx.rank)
    if dataset is None:  # first, so a bad data.root fails before any download
        dataset = build_dataset(config["data"], train=True)
    backbone = (backbone if backbone is not None else build_backbone(config["backbone"])).to(ctx.device)
    upsampler = build_upsampler(config["model"], backbone).to(ctx.device)
    if not upsampler.trainable or not any(p.requires_grad for p in upsampler.parameters()):
        raise ValueError(f"model={upsampler.name} has no parameters to train; choose a learned model (model=lift)")
    objective = build_objective(config["objective"])
    check_data_extras(dataset, objective)
    objective.setup(backbone)
    objective.to(ctx.device)
    step_module: nn.Module = TrainStep(backbone, upsampler, objective)
    if ctx.enabled:
        if ctx.device.type == "cuda" and train_cfg.sync_batchnorm:
            step_module = nn.SyncBatchNorm.convert_sync_batchnorm(step_module)
        device_ids = [ctx.device] if ctx.device.type == "cuda" else None
        step_module = DistributedDataParallel(step_module, device_ids=device_ids)
    trainable = [p for p in step_module.parameters() if p.requires_grad]
    optimizer, scheduler = build_optimizer(trainable, settings.optimizer, max_steps)
    amp_dtype = PRECISIONS[settings.precision]
    scaler = grad_scaler(settings.precision, ctx.device)

    start_step = 0
    if last is not None:
        state = load_train_state(last)
        upsampler.load_state_dict(state["upsampler"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved without fp16 (resume_allow_changes may have switched it on)
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][ctx.rank])
        start_step = state["step"]
        if ctx.is_main:
            truncate_metrics(run_dir, start_step)
            log.info("resumed from %s at step %d", last, start_step)
    ctx.barrier()

    loader = make_loader(config, dataset, ctx, start_step)
    logger_cfg = settings.logger
    logger = RunLogger(run_dir, tensorboard=logger_cfg.tensorboard, wandb=logger_cfg.wandb,
                       wandb_project=logger_cfg.wandb_project, wandb_mode=logger_cfg.wandb_mode, config=config,
                       enabled=ctx.is_main)
    if ctx.is_main:
        kept = run_dir / f"config.{last.name}.json" if changes else None
        if kept is not None and not kept.exists():  # the settings the run had up to that checkpoint
            shutil.copyfile(run_dir / "config.json", kept)
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2, default=str))

    def checkpoint(step: int, metrics: dict[str, float]) -> Path:
        states = ctx.gather_objects(rng_state())  # every rank's RNG, so every rank resumes exactly
        path = checkpoints / f"step_{step:07d}"
        if ctx.is_main:
            meta = {"backbone": backbone.spec(), "step": step, "metrics": metrics, "config": config,
                    "code_version": version, "command": command}
            train_state = {"step": step, "upsampler": upsampler.state_dict(), "objective": objective.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "rng": states}
            save_checkpoint(path, upsampler, meta, train_state, keep=train_cfg.keep_checkpoints)
        ctx.barrier()
        return path

    log_every, ckpt_every, grad_clip = train_cfg.log_every, train_cfg.ckpt_every, train_cfg.grad_clip
    batch_images = config["data"]["batch_size"] * ctx.world_size
    autocast = torch.autocast(ctx.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    metrics: dict[str, float] = {}
    skipped_total = 0
    progress = tqdm(total=max_steps, initial=start_step, desc="train", disable=not ctx.is_main, dynamic_ncols=True)
    step_module.train()
    data_iter = iter(loader)
    tick = time.perf_counter()
    try:
        for step in range(start_step + 1, max_steps + 1):
            batch = next(data_iter)
            skipped_total += batch["num_skipped"]
            images = batch["image"].to(ctx.device, non_blocking=True)
            extras = {key: batch[key].to(ctx.device, non_blocking=True) for key in DATA_EXTRAS if key in batch}
            with autocast:
                losses = step_module(images, **extras)
            loss = losses["loss"]
            if ctx.any_true(not torch.isfinite(loss).item()):
                terms = {k: float(v.detach()) for k, v in losses.items()}
                raise NonFiniteLossError(
                    f"the loss is not finite at step {step} ({terms}); try a lower optimizer.lr, "
                    "train.grad_clip=1.0, or precision=fp32"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(trainable, grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            if step % log_every == 0 or step == max_steps:
                elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                steps_done = log_every if step % log_every == 0 else step % log_every
                metrics = {k: float(v.detach()) for k, v in losses.items()}
                metrics.update(lr=scheduler.get_last_lr()[0], images_per_s=steps_done * batch_images / elapsed)
                if skipped_total:
                    metrics["skipped_images"] = skipped_total
                logger.log(step, metrics)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.1f}")
            progress.update(1)
            if step % ckpt_every == 0 and step != max_steps:
                checkpoint(step, metrics)
        final = checkpoint(max_steps, metrics) if start_step < max_steps else last
    finally:
        progress.close()
        logger.close()
    if skipped_total:
        log.warning("%d unreadable images were skipped during training", skipped_total)
    upsampler.eval()
    history = read_metrics(run_dir) if ctx.is_main else []
    return TrainResult(run_dir, final, backbone, upsampler, max_steps, ctx.is_main, history)
