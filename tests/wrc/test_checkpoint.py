from __future__ import annotations

import json

import pytest
import torch

from wrc import create_upsampler, load_upsampler
from wrc.checkpoint import LATEST, latest_checkpoint, prune_checkpoints, read_checkpoint_meta, save_checkpoint


def _trained_lift() -> torch.nn.Module:
    up = create_upsampler("lift", 16, 14, image_channels=8)
    with torch.no_grad():
        for p in up.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    up.train()(torch.randn(2, 16, 3, 3), torch.rand(2, 3, 42, 42))  # moves BatchNorm running stats
    return up.eval()


def test_round_trip_rebuilds_the_same_function(tmp_path):
    up = _trained_lift()
    save_checkpoint(tmp_path / "ckpts" / "step_0000010", up, {"backbone": {"name": "x"}, "step": 10})
    loaded = load_upsampler(tmp_path / "ckpts" / "step_0000010")
    assert loaded.init_kwargs == {"image_channels": 8} and loaded.patch_size == 14
    feats, image = torch.randn(1, 16, 4, 5), torch.rand(1, 3, 56, 70)
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats, image), up(feats, image))
    meta = read_checkpoint_meta(tmp_path / "ckpts")  # a checkpoints/ folder resolves through LATEST
    assert meta["name"] == "lift" and meta["step"] == 10 and meta["in_channels"] == 16


def test_atomic_layout_and_latest_pointer(tmp_path):
    up = create_upsampler("lift", 8, 16)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / f"step_{step:07d}", up, {"step": step}, {"step": step})
    assert (tmp_path / LATEST).read_text().strip() == "step_0000003"
    assert latest_checkpoint(tmp_path) == tmp_path / "step_0000003"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000003"]
    assert json.loads((tmp_path / "step_0000003" / "upsampler.json").read_text())["step"] == 3


def test_missing_checkpoint_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a directory with upsampler.safetensors"):
        load_upsampler(tmp_path)
