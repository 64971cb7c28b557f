"""The benchmarks run without Hydra, so they carry the quickstart config; keep it identical to Hydra's."""

from __future__ import annotations

from benchmarks.bench_lift import QUICKSTART
from tests.test_configs import compose_train


def test_benchmark_quickstart_matches_the_experiment_config():
    composed = compose_train("experiment=quickstart")
    for key, value in QUICKSTART.items():
        assert composed[key] == value, key
