"""The trainer's resume and run-directory guarantees: a lost LATEST pointer still resumes from the newest good
checkpoint with the log trimmed to it; resume=true never silently starts a new run; a new run never overwrites
another run's checkpoints; two runs never share a run directory; interrupted writes are cleaned at start."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_train_config
from wrc.run_lock import RunDirectoryInUseError, RunLock
from wrc.training import train


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_whose_latest_pointer_was_lost_resumes_from_its_newest_checkpoint(tmp_path):
    full = train(tiny_train_config(tmp_path / "full", train={"max_steps": 4, "ckpt_every": 2}))
    cut = tmp_path / "cut"
    train(tiny_train_config(cut, train={"max_steps": 2, "ckpt_every": 2}))
    (cut / "checkpoints" / "LATEST").unlink()  # as after a kill during the first checkpoint's pointer write
    with open(cut / "metrics.jsonl", "a") as log:
        log.write('{"step": 3, "loss": 9.0}\n{"step": 4, "lo')  # lines of steps the checkpoint does not hold
    resumed = train(tiny_train_config(cut, resume=True, train={"max_steps": 4, "ckpt_every": 2}))
    assert resumed.step == 4 and losses(cut) == losses(full.run_dir)  # nothing duplicated, nothing lost


def test_resume_true_on_a_run_without_checkpoints_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoint: pass resume=false to start a new run"):
        train(tiny_train_config(tmp_path / "new", resume=True))
    assert not (tmp_path / "new" / "checkpoints").exists()


def test_resume_auto_starts_fresh_or_continues(tmp_path, caplog):
    first = train(tiny_train_config(tmp_path / "run", resume="auto", train={"max_steps": 2}))
    assert first.step == 2
    with caplog.at_level("WARNING", logger="wrc"):
        again = train(tiny_train_config(tmp_path / "run", resume="auto", train={"max_steps": 4}))
    assert again.step == 4 and [r["step"] for r in again.history] == [1, 2, 3, 4]
    assert "train.max_steps changes from 2 to 4 on resume" in caplog.text  # extending is allowed, not unnoticed


def test_a_new_run_never_overwrites_the_checkpoints_of_another(tmp_path):
    train(tiny_train_config(tmp_path / "run", train={"max_steps": 2}))
    before = (tmp_path / "run" / "checkpoints" / "step_0000002" / "upsampler.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds the checkpoints of a run: pass resume=true"):
        train(tiny_train_config(tmp_path / "run", train={"max_steps": 2}))
    assert (tmp_path / "run" / "checkpoints" / "step_0000002" / "upsampler.safetensors").read_bytes() == before


def test_a_second_run_into_a_locked_run_directory_is_refused(tmp_path):
    with RunLock(tmp_path / "run"):  # as another process holding it would
        with pytest.raises(RunDirectoryInUseError, match="is in use by another run"):
            train(tiny_train_config(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    train(tiny_train_config(tmp_path / "run"))  # released, and free again after a failed attempt


def test_leftovers_of_interrupted_writes_are_removed_at_start(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / ".step_0000002.abcd1234").mkdir(parents=True)  # a checkpoint write that was killed
    (run / "checkpoints" / ".step_0000002.abcd1234" / "upsampler.safetensors").write_bytes(b"torn")
    train(tiny_train_config(run, train={"max_steps": 2}))
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
