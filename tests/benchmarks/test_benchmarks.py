"""The benchmarks run without Hydra, so they read a snapshot of the composed quickstart config."""

from __future__ import annotations

import json

from tests.conftest import REPO_ROOT
from tests.test_configs import compose_train


def test_quickstart_snapshot_matches_the_experiment_config():
    snapshot = json.loads((REPO_ROOT / "benchmarks" / "configs" / "quickstart.json").read_text())
    composed = compose_train("experiment=quickstart")
    assert {k: composed[k] for k in snapshot} == snapshot, (
        "benchmarks/configs/quickstart.json is stale: regenerate it from "
        "`python train_wrc.py experiment=quickstart --cfg job` (without run_dir, name, evaluate)"
    )
