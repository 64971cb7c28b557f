"""The README's main job, end to end, exactly as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_quickstart_trains_evaluates_and_draws(tmp_path):
    run_dir = tmp_path / "quickstart"
    proc = subprocess.run([sys.executable, "train_wrc.py", "experiment=quickstart", f"hydra.run.dir={run_dir}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for key in ("run_dir", "checkpoint", "metrics", "figure"):  # it prints where its outputs are
        assert f"{key}: " in proc.stdout
    assert (run_dir / "checkpoints" / "step_0000300" / "upsampler.safetensors").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    results = metrics["results"]
    assert set(results) == {"bilinear", "wrc"}
    # the trained model beats bilinear on held-out scenes in the metric it is trained for
    assert results["wrc"]["cosine"] > results["bilinear"]["cosine"] + 0.01
    with Image.open(run_dir / "figure.png") as figure:
        assert figure.width > 4 * 224 and figure.height >= 3 * 2 * 224
