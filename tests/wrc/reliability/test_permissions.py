"""Guarantee: checkpoints, LATEST, atomically rewritten files (metrics.jsonl) and the run lock get the permissions
the umask gives, like files of any other tool (tempfile's mkdtemp / mkstemp alone leave 0700 / 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from wrc import create_upsampler
from wrc.checkpoint import LATEST, TRAIN_STATE, WEIGHTS, atomic_write_text, current_umask, save_checkpoint
from wrc.run_lock import RunLock
from wrc.run_logger import RunLogger, truncate_metrics


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_checkpoints_follow_the_umask(tmp_path, umask):
    directory = save_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000001", create_upsampler("lift", 8, 16),
                                {"step": 1}, {"step": 1})
    assert _mode(directory) == 0o777 & ~umask
    assert _mode(directory.parent) == 0o777 & ~umask
    for name in (WEIGHTS, "upsampler.json", TRAIN_STATE):
        assert _mode(directory / name) == 0o666 & ~umask, name
    assert _mode(directory.parent / LATEST) == 0o666 & ~umask


def test_atomic_writes_and_rewritten_metrics_follow_the_umask(tmp_path, umask):
    atomic_write_text(tmp_path / "note.txt", "x")
    assert _mode(tmp_path / "note.txt") == 0o666 & ~umask
    logger = RunLogger(tmp_path)
    logger.log(1, {"loss": 1.0})
    logger.close()
    truncate_metrics(tmp_path, 1)
    assert _mode(tmp_path / "metrics.jsonl") == 0o666 & ~umask


def test_the_run_lock_follows_the_umask(tmp_path, umask):
    with RunLock(tmp_path / "run") as lock:
        assert _mode(lock.path) == 0o666 & ~umask
