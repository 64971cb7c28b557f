"""Detector checkpoints: ``step_XXXXXXX/`` with ``detector.safetensors`` + ``detector.json`` (+ ``train_state.pt``),
written like the upsampler checkpoints of wrc/checkpoint.py: into a temporary ``.step_XXXXXXX.<random>`` folder
renamed into place (``clean_interrupted_writes`` removes what a killed run left), then ``LATEST`` names it.

The weights are the detector's state without its frozen parts: the ViT and the upsampler are rebuilt from their
specs (in ``detector.json``), except where this run trained them or loaded them from ``init_from`` (then they are
saved too: ``meta["saved"]``). A saved ViT is also written as ``backbone.safetensors`` in timm's layout, so that
``train_wrc.py backbone.weights=<step>/backbone.safetensors`` trains an upsampler on the fine-tuned ViT (LiFT's
pipeline, step 2).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from wrc import checkpoint as shared
from wrc.checkpoint import LATEST, atomic_write_text, current_umask, fsync_directory, step_directories

WEIGHTS, META, TRAIN_STATE, BACKBONE = "detector.safetensors", "detector.json", "train_state.pt", "backbone.safetensors"
FORMAT = "vitdet_mask_rcnn"
PARTS = {"vit": "backbone.vit.", "upsampler": "backbone.pyramid.upsampler."}  # part -> its state-dict prefix


def checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a complete detector checkpoint (None: it is): the upsampler checkpoints' checks
    (wrc.checkpoint) on the detector's file names."""
    return shared.checkpoint_problem(directory, weights=WEIGHTS, meta_name=META)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint LATEST names when it is complete, else the newest complete ``step_*`` folder, else None."""
    return shared.latest_checkpoint(checkpoints, problem=checkpoint_problem)


def resolve(path: str | os.PathLike) -> Path:
    """A step folder, a checkpoints/ folder or a run directory -> the (latest) complete checkpoint in it."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if candidate.is_dir() and checkpoint_problem(candidate) is not None:
            found = latest_checkpoint(candidate)
            if found is not None:
                return found
    if checkpoint_problem(path) is not None:
        raise FileNotFoundError(f"no detector checkpoint at {str(path)!r}: expected a step_* folder with {WEIGHTS} "
                                f"and {META}, a checkpoints/ folder or a run directory of evaluation.detection.train")
    return path


def trainable_state(detector: torch.nn.Module, saved: dict[str, bool]) -> dict[str, torch.Tensor]:
    """The detector's state without the parts not ``saved`` (their specs rebuild them)."""
    skip = tuple(prefix for part, prefix in PARTS.items() if not saved.get(part))
    return {k: v.detach().cpu().contiguous() for k, v in detector.state_dict().items() if not k.startswith(skip)}


def save(directory: Path, detector: torch.nn.Module, meta: dict[str, Any], train_state: dict[str, Any] | None = None,
         *, keep: int | None = None) -> Path:
    """Write a checkpoint folder atomically, point LATEST at it, keep the ``keep`` newest."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    saved = meta.get("saved", {})
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        save_file(trainable_state(detector, saved), str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps({"format": FORMAT, **meta}, indent=2, default=str))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        if saved.get("vit"):
            vit = detector.backbone.vit.model
            save_file({k: v.detach().cpu().contiguous() for k, v in vit.state_dict().items()}, str(tmp / BACKBONE))
        for name in os.listdir(tmp):
            os.chmod(tmp / name, 0o666 & ~current_umask())  # safetensors writes 0600
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        old = directory.parent / f".{directory.name}.{secrets.token_hex(4)}" if directory.exists() else None
        if old is not None:
            os.replace(directory, old)
        os.replace(tmp, directory)
        fsync_directory(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        atomic_write_text(directory.parent / LATEST, directory.name + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op after the rename
    if keep is not None:
        for stale in step_directories(directory.parent)[:-keep]:
            if stale != directory:
                shutil.rmtree(stale, ignore_errors=True)
    return directory


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    meta = json.loads((resolve(path) / META).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a detector checkpoint of evaluation.detection.train (format "
                         f"{meta.get('format')!r})")
    return meta


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(resolve(path) / WEIGHTS))


def load_train_state(directory: Path) -> dict[str, Any]:
    return torch.load(Path(directory) / TRAIN_STATE, map_location="cpu", weights_only=False)


def load_matching(detector: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load the tensors of ``state`` whose name and shape match the detector's; returns (loaded, skipped) names."""
    own = detector.state_dict()
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    detector.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded, sorted(set(state) - set(loaded))
