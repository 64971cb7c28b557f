from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, tiny_train_config
from tests.helpers.ddp import assert_ranks_hold_the_same_parameters, run_two_ranks
from wrc import load_upsampler
from wrc.checkpoint import load_train_state
from wrc.objectives.lift_multiscale import LiftMultiscale
from wrc.run_logger import read_metrics
from wrc.training import NonFiniteLossError, ResumeConfigError, train

HELPER = REPO_ROOT / "tests" / "helpers" / "train_from_json.py"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def _write_config(path, config) -> str:
    path.write_text(json.dumps(config))
    return str(path)


def test_short_run_writes_logs_and_checkpoints(tmp_path):
    result = train(tiny_train_config(tmp_path / "run"))
    history = read_metrics(tmp_path / "run")
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all({"loss", "loss_x2", "loss_x4", "lr", "images_per_s"} <= set(h) for h in history)
    assert result.checkpoint.name == "step_0000004"
    upsampler = load_upsampler(tmp_path / "run")
    assert upsampler.name == "lift" and upsampler.in_channels == 64
    meta = json.loads((result.checkpoint / "upsampler.json").read_text())
    assert meta["backbone"]["name"] == "test_vit" and meta["config"]["train"]["max_steps"] == 4
    assert set(meta["code_version"]) == {"version", "commit", "dirty"}  # wrc.provenance.code_version()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved == meta["config"] and saved["train"]["grad_clip"] == 1.0  # every default, as it ran


def test_warmup_cosine_schedule(tmp_path):
    config = tiny_train_config(tmp_path / "run", optimizer={"lr": 1e-3, "warmup_steps": 2, "min_lr_ratio": 0.0})
    train(config)
    lrs = [h["lr"] for h in read_metrics(tmp_path / "run")]
    # after step 1: warm-up 2/2; then cosine over the remaining 2 steps: 0.5, 0.
    assert lrs == pytest.approx([1e-3, 1e-3, 0.5e-3, 0.0], abs=1e-9)


@pytest.mark.slow
def test_kills_at_any_moment_even_inside_a_checkpoint_write_resume_to_the_uninterrupted_losses(tmp_path):
    """Killed twice, once by SIGKILL at a random moment after the first checkpoint and once inside the writing
    of a later checkpoint (at a seeded random step of it: a file, the rename or the LATEST update), the run
    resumes to the losses of a run that never stopped, with no step logged twice."""
    config = tiny_train_config(tmp_path / "reference", train={"max_steps": 30, "ckpt_every": 5, "log_every": 1})
    reference = train(config).history

    config["run_dir"] = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, str(HELPER), _write_config(tmp_path / "kill.json", config)], env=_env(),
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "LATEST"
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(read_metrics(tmp_path / "killed")) < 30

    config["resume"] = True
    die_at = random.Random(0).randint(1, 5)  # one of the 5 write steps of the first checkpoint after resuming
    dying = subprocess.run([sys.executable, str(HELPER), _write_config(tmp_path / "resume.json", config),
                            "--die-at-write", str(die_at)], env=_env(), cwd=REPO_ROOT, capture_output=True)
    assert dying.returncode == 137, dying.stderr[-2000:]
    resumed = train(config).history
    assert [h["step"] for h in resumed] == list(range(1, 31))
    for ref, res in zip(reference, resumed, strict=True):
        for key in ("loss", "loss_x2", "loss_x4", "lr"):
            assert res[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), (ref["step"], key)


def test_resume_with_a_run_directory_path(tmp_path):
    train(tiny_train_config(tmp_path / "run"))
    config = tiny_train_config(tmp_path / "ignored", resume=str(tmp_path / "run"), train={"max_steps": 6})
    result = train(config)
    assert result.run_dir == tmp_path / "run" and result.checkpoint.name == "step_0000006"
    assert [h["step"] for h in read_metrics(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_changed_settings_unless_allowed(tmp_path):
    train(tiny_train_config(tmp_path / "run", train={"max_steps": 1}))
    changed = tiny_train_config(tmp_path / "run", resume=True, train={"max_steps": 2},
                                optimizer={"lr": 3e-4}, data={"batch_size": 4})
    with pytest.raises(ResumeConfigError) as err:
        train(changed)
    message = str(err.value)
    assert "optimizer.lr: 0.001 -> 0.0003" in message and "data.batch_size: 2 -> 4" in message
    assert "max_steps" not in message and "resume_allow_changes=true" in message
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optimizer"]["lr"] == 1e-3  # untouched

    result = train({**changed, "resume_allow_changes": True})
    assert result.checkpoint.name == "step_0000002"
    assert [h["step"] for h in read_metrics(tmp_path / "run")] == [1, 2]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optimizer"]["lr"] == 3e-4
    kept = json.loads((tmp_path / "run" / "config.step_0000001.json").read_text())  # nothing lost
    assert kept["optimizer"]["lr"] == 1e-3 and kept["data"]["batch_size"] == 2


def test_fp16_on_the_cpu_trains_with_loss_scaling(tmp_path):
    result = train(tiny_train_config(tmp_path / "run", precision="fp16", train={"max_steps": 1}))
    scaler = load_train_state(result.checkpoint)["scaler"]
    assert scaler["scale"] > 0  # a disabled GradScaler saves {}
    assert all(math.isfinite(h["loss"]) for h in read_metrics(tmp_path / "run"))


def test_nan_loss_is_a_clear_error(tmp_path, monkeypatch):
    def nan_loss(self, backbone, upsampler, images):
        out = upsampler(backbone(images), images)
        return {"loss": out.mean() * float("nan")}

    monkeypatch.setattr(LiftMultiscale, "forward", nan_loss)
    with pytest.raises(NonFiniteLossError, match="not finite at step 1.*optimizer.lr"):
        train(tiny_train_config(tmp_path / "run"))


def test_training_a_parameter_free_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model=bilinear has no parameters to train"):
        config = tiny_train_config(tmp_path / "run")
        config["model"] = {"name": "bilinear"}
        train(config)


def test_resume_path_without_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        train(tiny_train_config(tmp_path / "run", resume=str(tmp_path)))


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_gloo(tmp_path):
    config = tiny_train_config(tmp_path / "run{rank}", train={"max_steps": 3, "ckpt_every": 2})
    run_two_ranks(HELPER, _write_config(tmp_path / "ddp.json", config), tmp_path / "states", 300)
    assert_ranks_hold_the_same_parameters(tmp_path / "states")
    history = read_metrics(tmp_path / "run0")
    assert [h["step"] for h in history] == [1, 2, 3]  # rank 0 alone logs
    assert history[0]["images_per_s"] > 0
    checkpoints = sorted(p.name for p in (tmp_path / "run0" / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_0000002", "step_0000003"]
    assert not (tmp_path / "run1").exists()  # every rank works in rank 0's run directory
