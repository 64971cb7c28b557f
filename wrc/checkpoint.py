"""Checkpoints: safetensors weights + a JSON recipe, written atomically, loadable from the pair alone.

A checkpoint is a directory ``step_XXXXXXX/`` holding
- ``upsampler.safetensors``: the upsampler's weights (all that inference needs),
- ``upsampler.json``: name, constructor arguments, backbone spec, training config, code version, metrics,
- ``train_state.pt``: optimizer, scheduler, step and RNG states (only what resuming needs).

Nothing lost, nothing silently wrong:
- Atomic: files are written (and fsynced) into a temporary ``.step_XXXXXXX.<random>`` directory that is renamed
  into place, and ``LATEST`` (a one-line text file, replaced atomically) names the newest complete one. A failed
  write removes its temporary directory; ``clean_interrupted_writes`` removes what a killed process left.
- Discoverable: ``latest_checkpoint`` checks that the checkpoint LATEST names is complete (weights whose size
  matches their header, a JSON that parses, a train state that is a whole zip archive) and otherwise falls
  back, with a warning, to the newest complete ``step_*`` directory.
- Disk full: raises ``CheckpointDiskFullError`` saying where, how much is free and how much a checkpoint needs.
- Space: ``save_checkpoint(..., keep=k)`` prunes to ``max(k - 1, 1)`` checkpoints before writing and to ``k``
  after, never deleting the newest complete one, so at every moment a complete checkpoint exists and the disk
  holds at most ``max(k, 2)`` of them (pruning after writing alone needs room for ``k + 1``).
- Hub: an ``hf-hub:<org>/<name>[@revision]`` id names the same pair in a Hugging Face Hub repo (wrc/hub.py), read
  through huggingface_hub's cache.
- Permissions: files and directories get what the umask gives, as with any other tool (``mkdtemp`` and
  ``mkstemp`` would leave them 0700 / 0600).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from wrc.upsamplers.base import Upsampler, create_upsampler

log = logging.getLogger("wrc")

WEIGHTS, META, TRAIN_STATE, LATEST = "upsampler.safetensors", "upsampler.json", "train_state.pt", "LATEST"
STEP_NAME = re.compile(r"step_(\d+)")
# ".<target>.<8 random characters>": the names tempfile.mkstemp / mkdtemp (and _replace_dir) give temporaries
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}")
ATOMIC_TARGETS = (LATEST, "metrics.jsonl", "config.json", "wandb_id.txt", "metrics.json", "result.json")
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_MESSAGES = ("no space left on device", "disk quota exceeded", "enforce fail at inline_container",
                      "file write failed")


class CheckpointDiskFullError(OSError):
    """A checkpoint could not be written because its disk is full; the message says where and how much is needed."""


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it, racing threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: some filesystems refuse to fsync directories)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO], object], mode: str = "wb") -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it and rename it into place: readers see the
    old or the new content, never a torn file. The file gets the permissions the umask gives (mkstemp alone would
    leave it 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


def step_number(path: Path) -> int | None:
    """The step of a ``step_<digits>`` directory name, else None."""
    match = STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def step_directories(checkpoints_dir: Path) -> list[Path]:
    """``step_*`` directories sorted by step number (numerically: step_10000000 comes after step_9999999)."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    steps = [p for p in checkpoints_dir.iterdir() if step_number(p) is not None and p.is_dir()]
    return sorted(steps, key=step_number)


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole (its size must be 8 + header + the end of the last tensor), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > size - 8:
                return f"{path.name} is truncated ({size} bytes, its header alone needs {8 + header_size})"
            header = json.loads(handle.read(header_size))
    except (OSError, struct.error, ValueError) as err:
        return f"{path.name} is unreadable ({err})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    return None if size == expected else f"{path.name} has {size} bytes where its header promises {expected}"


def checkpoint_problem(directory: Path, weights: str = WEIGHTS, meta_name: str = META) -> str | None:
    """Why ``directory`` is not a complete checkpoint, or None when it is (cheap checks: sizes and headers).

    ``weights`` and ``meta_name`` name the safetensors + JSON pair (other checkpoints written the same way, e.g.
    the detector's, name theirs)."""
    directory = Path(directory)
    if not directory.is_dir():
        return "missing"
    for name in (weights, meta_name):
        if not (directory / name).is_file():
            return f"incomplete ({name} missing)"
    try:
        meta = json.loads((directory / meta_name).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"incomplete ({meta_name} does not parse: {err})"
    if not isinstance(meta, dict):
        return f"incomplete ({meta_name} is not a JSON object)"
    problem = _safetensors_problem(directory / weights)
    if problem is not None:
        return f"incomplete ({problem})"
    state = directory / TRAIN_STATE
    if state.exists() and not zipfile.is_zipfile(state):
        return f"incomplete ({TRAIN_STATE} is not a whole torch archive)"
    return None


def _read_pointer(pointer: Path) -> str | None:
    """The directory name LATEST holds, None when it is missing, unreadable or not a plain name."""
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if name and "/" not in name and name not in (".", "..") else None


def latest_checkpoint(checkpoints_dir: Path, problem: Callable[[Path], str | None] | None = None) -> Path | None:
    """The newest complete checkpoint directory under ``checkpoints_dir``, or None.

    LATEST decides when the checkpoint it names is complete; when LATEST is missing or names a deleted or
    incomplete step, the newest complete ``step_*`` directory is used, with a warning saying so. ``problem``
    judges completeness (default: ``checkpoint_problem``, the upsampler's pair).
    """
    judge = problem or checkpoint_problem
    checkpoints_dir = Path(checkpoints_dir)
    pointer = checkpoints_dir / LATEST
    named = _read_pointer(pointer) if pointer.is_file() else None
    if named is not None:
        named_problem = judge(checkpoints_dir / named)
        if named_problem is None:
            return checkpoints_dir / named
        reason = f"{pointer} names {named}, which is {named_problem}"
    else:
        reason = f"{pointer} is {'unreadable' if pointer.exists() else 'missing'}"
    steps = step_directories(checkpoints_dir)
    fallback = next((p for p in reversed(steps) if judge(p) is None), None)
    if fallback is not None:
        log.warning("%s: using %s, the newest complete step_* directory", reason, fallback.name)
    elif steps or pointer.exists():
        log.warning("%s, and no step_* directory in %s is a complete checkpoint", reason, checkpoints_dir)
    return fallback


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest step directories; never the newest complete one (what LATEST names)."""
    latest = latest_checkpoint(checkpoints_dir)
    steps = step_directories(checkpoints_dir)
    for old in steps[: max(0, len(steps) - max(keep, 1))]:
        if latest is None or old.resolve() != latest.resolve():
            shutil.rmtree(old, ignore_errors=True)


def clean_interrupted_writes(directory: Path, targets: Iterable[str] = ATOMIC_TARGETS) -> list[Path]:
    """Remove what interrupted atomic writes left in ``directory``; returns the removed paths.

    Only temporaries of this module's writes match: ``.step_<digits>.<random>`` directories and
    ``.<target>.<random>`` files for ``target`` in ``targets``. Call it while holding the run's lock
    (``wrc.run_lock.RunLock``): another live writer's temporaries would be removed too.
    """
    directory, targets = Path(directory), set(targets)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        match = TEMP_NAME.fullmatch(entry.name)
        if match is None or not (STEP_NAME.fullmatch(match["target"]) or match["target"] in targets):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.warning("removed %d leftovers of interrupted writes in %s: %s", len(removed), directory,
                    ", ".join(p.name for p in removed))
    return removed


def _create(path: Path) -> IO[bytes]:
    """A new file for writing (permissions from the umask); the one place checkpoint files are opened."""
    return open(path, "xb")  # noqa: SIM115 (closed by the caller's with)


def _write_file(path: Path, write: Any) -> None:
    """Create ``path``, let ``write(handle)`` fill it, and fsync it before the directory is renamed into place."""
    with _create(path) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _payload_bytes(obj: Any) -> int:
    """Bytes of the tensors and arrays in a (nested) object: what ``torch.save`` will write, give or take."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_payload_bytes(v) for v in obj)
    return 0


def _format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps: torch and safetensors turn ENOSPC into RuntimeErrors) means a full disk."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(err).lower() for text in DISK_FULL_MESSAGES):
            return True
        err = err.__cause__ or err.__context__
    return False


def _disk_full_error(directory: Path, needed: int, err: BaseException) -> CheckpointDiskFullError:
    try:
        free = _format_bytes(shutil.disk_usage(directory.parent).free)
    except OSError:
        free = "unknown"
    latest = latest_checkpoint(directory.parent)
    return CheckpointDiskFullError(
        errno.ENOSPC,
        f"the disk is full: could not write checkpoint {directory} ({type(err).__name__}: {err}). Free on the "
        f"filesystem holding {directory.parent}: {free}; one checkpoint needs about {_format_bytes(needed)}. Free "
        f"some space, lower train.keep_checkpoints, or put run_dir on a larger disk; the last complete checkpoint "
        f"({latest if latest is not None else 'none'}) is intact",
    )


def _make_temp_dir(parent: Path, name: str) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the renamed checkpoint keeps this mode
    return tmp


def _replace_dir(tmp: Path, directory: Path) -> None:
    """Rename ``tmp`` to ``directory``; an existing one is first moved aside (a temporary name), then deleted."""
    old = None
    if directory.exists():
        old = directory.parent / f".{directory.name}.{secrets.token_hex(4)}"
        os.replace(directory, old)
    os.replace(tmp, directory)
    fsync_directory(directory.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    directory: Path, upsampler: Upsampler, meta: dict[str, Any], train_state: dict[str, Any] | None = None,
    *, keep: int | None = None,
) -> Path:
    """Atomically write a checkpoint directory and point ``LATEST`` in its parent at it.

    ``keep``: also prune the parent to that many checkpoints, before writing (to ``max(keep - 1, 1)``) and
    after, so that pruning never needs room for more than one checkpoint beyond ``keep`` (module docstring).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if keep is not None:
        prune_checkpoints(directory.parent, max(keep - 1, 1))
    state = {k: v.detach().cpu().contiguous() for k, v in upsampler.state_dict().items()}
    weights = safetensors_bytes(state)
    recipe = {"name": upsampler.name, "in_channels": upsampler.in_channels, "patch_size": upsampler.patch_size,
              "kwargs": upsampler.init_kwargs, **meta}
    recipe_bytes = json.dumps(recipe, indent=2, default=str).encode()
    needed = len(weights) + len(recipe_bytes) + _payload_bytes(train_state)
    tmp = _make_temp_dir(directory.parent, directory.name)
    try:
        _write_file(tmp / WEIGHTS, lambda handle: handle.write(weights))
        _write_file(tmp / META, lambda handle: handle.write(recipe_bytes))
        if train_state is not None:
            _write_file(tmp / TRAIN_STATE, lambda handle: torch.save(train_state, handle))
        fsync_directory(tmp)
        _replace_dir(tmp, directory)
        atomic_write_text(directory.parent / LATEST, directory.name + "\n")
    except Exception as err:
        if is_disk_full(err):
            shutil.rmtree(tmp, ignore_errors=True)  # first, so that the free space reported counts it
            raise _disk_full_error(directory, needed, err) from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op after the rename
    if keep is not None:
        prune_checkpoints(directory.parent, keep)
    return directory


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory (the file pair) that a step directory, weights file, checkpoints/ folder, run
    directory or ``hf-hub:<org>/<name>[@revision]`` id (downloaded or read from the cache: wrc/hub.py) names."""
    if isinstance(path, str) and path.startswith("hf-hub:"):
        from wrc.hub import download_checkpoint

        return download_checkpoint(path)
    path = Path(path)
    if path.is_dir() and ((path / LATEST).is_file() or step_directories(path)):  # a checkpoints/ folder
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
    return json.loads((resolve_checkpoint(path) / META).read_text())


def load_upsampler(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Upsampler:
    """Rebuild an upsampler from its checkpoint (directory, weights file, checkpoints/ or run directory, or an
    ``hf-hub:<org>/<name>[@revision]`` id)."""
    directory = resolve_checkpoint(path)
    meta = json.loads((directory / META).read_text())
    upsampler = create_upsampler(meta["name"], meta["in_channels"], meta["patch_size"], **meta.get("kwargs", {}))
    upsampler.load_state_dict(load_file(str(directory / WEIGHTS), device=str(map_location)))
    return upsampler.to(map_location).eval()


def load_train_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / TRAIN_STATE, map_location="cpu", weights_only=False)
