from __future__ import annotations

import json

import pytest

from wrc.run_logger import RunLogger, read_metrics, truncate_metrics


def test_jsonl_always_and_truncation_on_resume(tmp_path):
    logger = RunLogger(tmp_path)
    for step in range(1, 6):
        logger.log(step, {"loss": 1.0 / step})
    logger.close()
    truncate_metrics(tmp_path, 3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_non_main_ranks_write_nothing(tmp_path):
    logger = RunLogger(tmp_path / "rank1", tensorboard=True, enabled=False)
    logger.log(1, {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "rank1").exists()


def test_tensorboard_scalars(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logger = RunLogger(tmp_path, tensorboard=True)
    logger.log(1, {"loss": 0.5})
    logger.log(2, {"loss": 0.25})
    logger.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 0.5), (2, 0.25)]


def test_wandb_offline_needs_no_account(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = RunLogger(tmp_path, wandb=True, wandb_mode="offline", config={"model": "lift"})
    logger.log(1, {"loss": 0.5})
    logger.close()
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 0.5
