"""train(config): the whole training loop, top to bottom, with no Hydra in sight.

``config`` is a plain nested dict with the groups backbone, model, objective, data, optimizer and the
keys seed, device, precision, run_dir, resume, train and logger (see config/train.yaml). Under torchrun
every process calls ``train``; rank 0 alone logs and writes checkpoints.

Resuming is exact: the data order is a pure function of (seed, step) (``ResumableSampler``), crops
are seeded per sample, and checkpoints hold the optimizer, scheduler and every rank's RNG states, so a
run killed at any point and resumed produces the same losses as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
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

import wrc
from wrc.backbone import PRECISIONS, FrozenBackbone
from wrc.build import build_backbone, build_objective, build_optimizer, build_upsampler
from wrc.checkpoint import latest_checkpoint, load_train_state, prune_checkpoints, save_checkpoint
from wrc.data import ResumableSampler, build_dataset, stack_batch
from wrc.distributed import DistributedContext, init_distributed
from wrc.objectives import Objective
from wrc.run_logger import RunLogger, read_metrics, truncate_metrics
from wrc.upsamplers import Upsampler

log = logging.getLogger("wrc")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says at which step and what to try."""


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

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.objective(self._backbone[0], self.upsampler, images)


def code_version() -> str:
    """Package version plus the git commit, when run from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{wrc.__version__}+{sha}" if sha else wrc.__version__


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


def resolve_run_dir(config: dict[str, Any]) -> tuple[Path, bool]:
    """(run directory, whether to resume). ``resume`` may be false, true (this run_dir) or a run directory."""
    resume = config.get("resume", False)
    if isinstance(resume, str) and resume.lower() not in ("true", "false"):
        run_dir = Path(resume)
        if not (run_dir / "checkpoints").is_dir():
            raise FileNotFoundError(f"resume={resume!r} is not a run directory with a checkpoints/ folder")
        return run_dir, True
    if config.get("run_dir") is None:
        raise ValueError("run_dir is not set: pass run_dir=/path/for/outputs")
    return Path(config["run_dir"]), str(resume).lower() == "true"


def make_loader(config: dict[str, Any], dataset: Dataset, ctx: DistributedContext, start_step: int) -> DataLoader:
    data = config["data"]
    sampler = ResumableSampler(len(dataset), data["batch_size"], seed=config["seed"], rank=ctx.rank,
                               world_size=ctx.world_size, start_step=start_step)
    workers = int(data.get("num_workers", 0))
    return DataLoader(dataset, batch_size=data["batch_size"], sampler=sampler, num_workers=workers,
                      collate_fn=stack_batch, pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(config["seed"]))


def train(config: dict[str, Any], *, backbone: nn.Module | None = None, dataset: Dataset | None = None) -> TrainResult:
    """Train the configured upsampler; returns where its run directory and final checkpoint are.

    ``backbone`` and ``dataset`` replace the ones the config would build: any frozen module with
    ``embed_dim``, ``patch_size``, ``spec()`` and ``forward(images)`` (e.g. the synthetic benchmark's
    oracle), and any dataset following ``wrc.data``'s item contract.
    """
    ctx = init_distributed(config.get("device", "auto"))
    run_dir, resume = ctx.from_main(resolve_run_dir(config))  # Hydra names each rank's dir on its own clock
    train_cfg = config["train"]
    max_steps = int(train_cfg["max_steps"])
    seed_everything(int(config["seed"]) + ctx.rank)
    if dataset is None:  # first, so a bad data.root fails before any download
        dataset = build_dataset(config["data"], train=True)
    backbone = (backbone if backbone is not None else build_backbone(config["backbone"])).to(ctx.device)
    upsampler = build_upsampler(config["model"], backbone).to(ctx.device)
    if not upsampler.trainable or not any(p.requires_grad for p in upsampler.parameters()):
        raise ValueError(f"model={upsampler.name} has no parameters to train; choose a learned model (model=lift)")
    objective = build_objective(config["objective"])
    objective.setup(backbone)
    objective.to(ctx.device)
    step_module: nn.Module = TrainStep(backbone, upsampler, objective)
    if ctx.enabled:
        if ctx.device.type == "cuda" and train_cfg.get("sync_batchnorm", True):
            step_module = nn.SyncBatchNorm.convert_sync_batchnorm(step_module)
        device_ids = [ctx.device] if ctx.device.type == "cuda" else None
        step_module = DistributedDataParallel(step_module, device_ids=device_ids)
    trainable = [p for p in step_module.parameters() if p.requires_grad]
    optimizer, scheduler = build_optimizer(trainable, config["optimizer"], max_steps)

    precision = config.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {tuple(PRECISIONS)}")
    amp_dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=precision == "fp16" and ctx.device.type == "cuda")

    start_step, checkpoints = 0, run_dir / "checkpoints"
    last = latest_checkpoint(checkpoints) if resume else None
    if resume and last is None:
        log.warning("resume requested but %s holds no checkpoint: starting from step 0", checkpoints)
    if last is not None:
        state = load_train_state(last)
        upsampler.load_state_dict(state["upsampler"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][ctx.rank])
        start_step = state["step"]
        if ctx.is_main:
            truncate_metrics(run_dir, start_step)
            log.info("resumed from %s at step %d", last, start_step)
    ctx.barrier()

    loader = make_loader(config, dataset, ctx, start_step)
    logger_cfg = config.get("logger", {})
    logger = RunLogger(run_dir, tensorboard=logger_cfg.get("tensorboard", False), wandb=logger_cfg.get("wandb", False),
                       wandb_project=logger_cfg.get("wandb_project", "wrc"),
                       wandb_mode=logger_cfg.get("wandb_mode", "offline"), config=config, enabled=ctx.is_main)
    if ctx.is_main:
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))

    def checkpoint(step: int, metrics: dict[str, float]) -> Path:
        states = ctx.gather_objects(rng_state())  # every rank's RNG, so every rank resumes exactly
        path = checkpoints / f"step_{step:07d}"
        if ctx.is_main:
            meta = {"backbone": backbone.spec(), "step": step, "metrics": metrics, "config": config,
                    "code_version": code_version()}
            train_state = {"step": step, "upsampler": upsampler.state_dict(), "objective": objective.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "rng": states}
            save_checkpoint(path, upsampler, meta, train_state)
            prune_checkpoints(checkpoints, int(train_cfg.get("keep_checkpoints", 3)))
        ctx.barrier()
        return path

    log_every, ckpt_every = int(train_cfg.get("log_every", 10)), int(train_cfg.get("ckpt_every", 1000))
    grad_clip = float(train_cfg.get("grad_clip", 0.0) or 0.0)
    batch_images = int(config["data"]["batch_size"]) * ctx.world_size
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
            with autocast:
                losses = step_module(images)
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
