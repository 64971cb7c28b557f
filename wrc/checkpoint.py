"""Checkpoints: safetensors weights + a JSON recipe, written atomically, loadable from the pair alone.

A checkpoint is a directory ``step_XXXXXXX/`` holding
- ``upsampler.safetensors``: the upsampler's weights (all that inference needs),
- ``upsampler.json``: name, constructor arguments, backbone spec, training config, code version, metrics,
- ``train_state.pt``: optimizer, scheduler, step and RNG states (only what resuming needs).
It is written to a temporary directory and renamed into place, and ``LATEST`` (a one-line text file,
replaced atomically) names the newest complete one, so a run killed at any moment leaves a valid
checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from wrc.upsamplers.base import Upsampler, create_upsampler

WEIGHTS, META, TRAIN_STATE, LATEST = "upsampler.safetensors", "upsampler.json", "train_state.pt", "LATEST"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a torn file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    directory: Path, upsampler: Upsampler, meta: dict[str, Any], train_state: dict[str, Any] | None = None
) -> Path:
    """Atomically write a checkpoint directory and point ``LATEST`` in its parent at it."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    state = {k: v.detach().cpu().contiguous() for k, v in upsampler.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS))
    recipe = {"name": upsampler.name, "in_channels": upsampler.in_channels, "patch_size": upsampler.patch_size,
              "kwargs": upsampler.init_kwargs, **meta}
    (tmp / META).write_text(json.dumps(recipe, indent=2, default=str))
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    atomic_write_text(directory.parent / LATEST, directory.name + "\n")
    return directory


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint directory under ``checkpoints_dir``, or None."""
    pointer = Path(checkpoints_dir) / LATEST
    if not pointer.is_file():
        return None
    candidate = Path(checkpoints_dir) / pointer.read_text().strip()
    return candidate if (candidate / WEIGHTS).is_file() else None


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest step directories (never the one LATEST names)."""
    latest = latest_checkpoint(checkpoints_dir)
    steps = sorted(p for p in Path(checkpoints_dir).glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        if latest is None or old.resolve() != latest.resolve():
            shutil.rmtree(old, ignore_errors=True)


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir() and (path / LATEST).is_file():  # a checkpoints/ folder
        path = latest_checkpoint(path) or path
    if path.is_dir() and (path / "checkpoints").is_dir():  # a run directory
        path = latest_checkpoint(path / "checkpoints") or path
    if path.is_file():
        path = path.parent
    if not (path / WEIGHTS).is_file() or not (path / META).is_file():
        raise FileNotFoundError(
            f"no upsampler checkpoint at {str(path)!r}: expected a directory with {WEIGHTS} and {META} "
            "(a step_* directory, a checkpoints/ folder or a run directory)"
        )
    return path


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((_resolve(path) / META).read_text())


def load_upsampler(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Upsampler:
    """Rebuild an upsampler from its checkpoint (directory, weights file, checkpoints/ or run directory)."""
    directory = _resolve(path)
    meta = json.loads((directory / META).read_text())
    upsampler = create_upsampler(meta["name"], meta["in_channels"], meta["patch_size"], **meta.get("kwargs", {}))
    upsampler.load_state_dict(load_file(str(directory / WEIGHTS), device=str(map_location)))
    return upsampler.to(map_location).eval()


def load_train_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / TRAIN_STATE, map_location="cpu", weights_only=False)
