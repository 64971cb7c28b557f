"""The quickstart configuration as the benchmarks see it (no Hydra), and training a variant of it.

benchmarks/configs/quickstart.json is the composed ``experiment=quickstart`` (kept identical by
tests/test_benchmarks.py).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

QUICKSTART: dict = json.loads((Path(__file__).parent / "configs" / "quickstart.json").read_text())


def train_variant(overrides: dict, steps: int, device: str, image_size: int | None = None) -> tuple:
    """Train the quickstart config with top-level groups replaced by ``overrides`` for ``steps`` steps in a
    temporary run directory; returns (backbone, upsampler in eval mode, seconds)."""
    from wrc.training import train

    config = copy.deepcopy(QUICKSTART)
    config.update(copy.deepcopy(overrides))
    config["device"] = device
    if image_size is not None:
        config["data"]["image_size"] = image_size
    config["train"].update(max_steps=steps, log_every=max(1, steps // 10), ckpt_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        config["run_dir"] = str(Path(tmp) / "run")
        start = time.perf_counter()
        result = train(config)
        return result.backbone, result.upsampler.eval(), time.perf_counter() - start
