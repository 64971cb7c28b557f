"""Guarantee: a checkpoint write that fails or is interrupted leaves no temporary behind and the previous checkpoint
intact; leftovers of killed writes are removed at start; a full disk is a clear error (where, free, needed); and
pruning keeps a complete checkpoint at every moment while needing room for at most one more than ``keep``.

A real full disk is produced without root by pointing one checkpoint file at ``/dev/full`` (every write fails with
ENOSPC in the kernel); mounting a small filesystem would need root, so it is not attempted."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
import torch

import wrc.checkpoint as checkpoint_module
from wrc import create_upsampler, load_upsampler
from wrc.checkpoint import (
    LATEST,
    TRAIN_STATE,
    WEIGHTS,
    CheckpointDiskFullError,
    checkpoint_problem,
    clean_interrupted_writes,
    latest_checkpoint,
    save_checkpoint,
    step_directories,
)

TORCH_ENOSPC = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


@pytest.fixture
def up():
    return create_upsampler("lift", 8, 16)


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _raise(exc):
    def writer(*args, **kwargs):
        raise exc
    return writer


def test_a_failed_write_removes_its_temporary_directory(tmp_path, up, monkeypatch):
    save_checkpoint(tmp_path / "step_0000001", up, {"step": 1}, {"step": 1})
    monkeypatch.setattr(torch, "save", _raise(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(tmp_path / "step_0000002", up, {"step": 2}, {"step": 2})
    assert _temporaries(tmp_path) == []
    assert (tmp_path / LATEST).read_text().strip() == "step_0000001"
    assert not (tmp_path / "step_0000002").exists()


def test_an_interrupt_mid_write_removes_its_temporary_directory(tmp_path, up, monkeypatch):
    monkeypatch.setattr(torch, "save", _raise(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "step_0000001", up, {"step": 1}, {"step": 1})
    assert _temporaries(tmp_path) == []


def test_leftovers_of_killed_writes_are_cleaned_at_start(tmp_path, up):
    checkpoints, run_dir = tmp_path / "run" / "checkpoints", tmp_path / "run"
    save_checkpoint(checkpoints / "step_0000002", up, {"step": 2})
    leftovers = [Path(tempfile.mkdtemp(dir=checkpoints, prefix=".step_0000004.")),
                 Path(tempfile.mkstemp(dir=checkpoints, prefix=f".{LATEST}.")[1]),
                 Path(tempfile.mkstemp(dir=run_dir, prefix=".metrics.jsonl.")[1])]
    (leftovers[0] / WEIGHTS).write_bytes(b"half a file")
    kept = [run_dir / ".lock", run_dir / ".hydra", checkpoints / "notes.txt", checkpoints / ".step_notes"]
    kept[0].write_text("")
    kept[1].mkdir()
    kept[2].write_text("mine")
    kept[3].write_text("mine")
    removed = clean_interrupted_writes(checkpoints) + clean_interrupted_writes(run_dir)
    assert sorted(removed) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in kept)
    assert latest_checkpoint(checkpoints) == checkpoints / "step_0000002"
    assert clean_interrupted_writes(tmp_path / "absent") == []


def _dev_full(name: str):
    """Open /dev/full instead of the checkpoint file ``name``: the kernel fails every write with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    real = checkpoint_module._create

    def create(path: Path):
        return open("/dev/full", "wb") if path.name == name else real(path)  # noqa: SIM115

    return create


@pytest.mark.parametrize("how", ["torch_runtime_error", "oserror_enospc", "no_space_message", "real_weights",
                                 "real_train_state"])
def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path, up, monkeypatch, how):
    save_checkpoint(tmp_path / "step_0000001", up, {"step": 1}, {"step": 1, "w": torch.zeros(1000)})
    if how == "torch_runtime_error":
        monkeypatch.setattr(torch, "save", _raise(RuntimeError(TORCH_ENOSPC)))
    elif how == "oserror_enospc":
        monkeypatch.setattr(torch, "save", _raise(OSError(errno.ENOSPC, "No space left on device")))
    elif how == "no_space_message":
        monkeypatch.setattr(torch, "save", _raise(RuntimeError("write failed: No space left on device")))
    else:
        monkeypatch.setattr(checkpoint_module, "_create", _dev_full(WEIGHTS if how == "real_weights" else TRAIN_STATE))
    target = tmp_path / "step_0000002"
    with pytest.raises(CheckpointDiskFullError) as caught:
        save_checkpoint(target, up, {"step": 2}, {"step": 2, "w": torch.zeros(1000)})
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert "the disk is full" in message and str(target) in message
    assert "free on the filesystem holding" in message.lower() and "one checkpoint needs about" in message
    assert "step_0000001" in message  # the intact checkpoint is named
    assert _temporaries(tmp_path) == [] and not target.exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_0000001"
    assert load_upsampler(tmp_path).name == "lift"


def test_other_errors_are_not_called_a_full_disk(tmp_path, up, monkeypatch):
    monkeypatch.setattr(torch, "save", _raise(OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):
        save_checkpoint(tmp_path / "step_0000001", up, {"step": 1}, {"step": 1})


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_pruning_keeps_a_complete_checkpoint_and_needs_at_most_one_extra(tmp_path, up, monkeypatch, keep):
    """While step N is written, at most max(keep - 1, 1) older checkpoints exist and the newest complete one is
    among them; afterwards exactly the ``keep`` newest remain."""
    real = checkpoint_module._write_file
    seen = []

    def spy(path: Path, write) -> None:
        if path.name == WEIGHTS:
            complete = [p for p in step_directories(tmp_path) if checkpoint_problem(p) is None]
            seen.append((len(complete), latest_checkpoint(tmp_path)))
        real(path, write)

    monkeypatch.setattr(checkpoint_module, "_write_file", spy)
    for step in range(1, 7):
        save_checkpoint(tmp_path / f"step_{step:07d}", up, {"step": step}, {"step": step}, keep=keep)
        assert [p.name for p in step_directories(tmp_path)] == [f"step_{s:07d}" for s in
                                                                range(max(1, step - keep + 1), step + 1)]
    for step, (count, latest) in enumerate(seen, start=1):
        assert count <= max(keep - 1, 1)
        assert step == 1 or latest == tmp_path / f"step_{step - 1:07d}"  # the previous one survives the write


def test_rewriting_an_existing_step_keeps_it_complete(tmp_path, up):
    save_checkpoint(tmp_path / "step_0000001", up, {"step": 1, "metrics": {"loss": 1.0}})
    save_checkpoint(tmp_path / "step_0000001", up, {"step": 1, "metrics": {"loss": 0.5}})
    assert checkpoint_problem(tmp_path / "step_0000001") is None and _temporaries(tmp_path) == []
    assert '"loss": 0.5' in (tmp_path / "step_0000001" / "upsampler.json").read_text()
