"""Guarantee: a resume finds the newest complete checkpoint even when ``checkpoints/LATEST`` is missing or names a
deleted or incomplete step (truncated weights, a JSON that does not parse, a torn train state), and says so."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from wrc import create_upsampler, load_upsampler
from wrc.checkpoint import LATEST, META, TRAIN_STATE, WEIGHTS, checkpoint_problem, latest_checkpoint, save_checkpoint


@pytest.fixture
def checkpoints(tmp_path):
    """checkpoints/ with complete step_0000001 .. step_0000003 (LATEST -> step_0000003), as training writes them."""
    up = create_upsampler("lift", 8, 16)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / f"step_{step:07d}", up, {"step": step}, {"step": step, "w": torch.zeros(4)})
    return tmp_path


def _truncate(path, keep_bytes):
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])


def test_a_valid_latest_is_used(checkpoints, caplog):
    with caplog.at_level(logging.WARNING, logger="wrc"):
        assert latest_checkpoint(checkpoints) == checkpoints / "step_0000003"
    assert not caplog.records


def test_missing_latest_falls_back_to_the_newest_step(checkpoints, caplog):
    (checkpoints / LATEST).unlink()
    with caplog.at_level(logging.WARNING, logger="wrc"):
        assert latest_checkpoint(checkpoints) == checkpoints / "step_0000003"
    assert "LATEST is missing" in caplog.text and "using step_0000003" in caplog.text
    assert load_upsampler(checkpoints).name == "lift"  # a checkpoints/ folder without LATEST still resolves


def test_latest_naming_a_deleted_step(checkpoints, caplog):
    shutil.rmtree(checkpoints / "step_0000003")
    with caplog.at_level(logging.WARNING, logger="wrc"):
        assert latest_checkpoint(checkpoints) == checkpoints / "step_0000002"
    assert "names step_0000003, which is missing" in caplog.text and "using step_0000002" in caplog.text


@pytest.mark.parametrize("damage, problem", [
    (lambda d: _truncate(d / WEIGHTS, 100), "upsampler.safetensors"),
    (lambda d: _truncate(d / WEIGHTS, 4), "upsampler.safetensors"),
    (lambda d: (d / WEIGHTS).unlink(), "upsampler.safetensors missing"),
    (lambda d: (d / META).unlink(), "upsampler.json missing"),
    (lambda d: _truncate(d / META, 10), "upsampler.json does not parse"),
    (lambda d: _truncate(d / TRAIN_STATE, 50), "train_state.pt"),
])
def test_latest_naming_an_incomplete_step(checkpoints, caplog, damage, problem):
    damage(checkpoints / "step_0000003")
    assert problem in checkpoint_problem(checkpoints / "step_0000003")
    with caplog.at_level(logging.WARNING, logger="wrc"):
        assert latest_checkpoint(checkpoints) == checkpoints / "step_0000002"
    assert "incomplete" in caplog.text and "using step_0000002" in caplog.text


def test_newest_is_chosen_by_step_number_not_by_name(tmp_path):
    up = create_upsampler("lift", 8, 16)
    for step in (9_999_999, 10_000_000):  # "step_10000000" < "step_9999999" as strings
        save_checkpoint(tmp_path / f"step_{step:07d}", up, {"step": step})
    (tmp_path / LATEST).unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_10000000"


def test_nothing_complete_gives_none(checkpoints, caplog):
    for step in (1, 2, 3):
        (checkpoints / f"step_{step:07d}" / WEIGHTS).unlink()
    with caplog.at_level(logging.WARNING, logger="wrc"):
        assert latest_checkpoint(checkpoints) is None
    assert "no step_* directory" in caplog.text
    assert latest_checkpoint(checkpoints / "absent") is None
