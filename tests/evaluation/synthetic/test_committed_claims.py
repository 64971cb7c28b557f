"""The ranking claims the README makes, asserted on the committed three-seed results (benchmarks/results/synthetic
and synthetic_seed1/2) through the same claim rule as seeds.md: gap of the means > 2 x the larger spread, and the
order holding in every seed. These are the full-scale claims; test_synthetic.py asserts the ones that also hold at
test scale on freshly trained runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.synthetic.seeds import claims, seed_records, summarise

RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
FOLDERS = [RESULTS / "synthetic", RESULTS / "synthetic_seed1", RESULTS / "synthetic_seed2"]
FIELD_ORDER = [("anyup", "jafar"), ("naf", "featup_jbu"), ("featup_jbu", "wrc"), ("wrc", "converse2d"),
               ("converse2d", "bilinear")]  # README: AnyUp > JAFAR, NAF > FeatUp-JBU > WRC > Converse2D > bilinear
GUIDED_BEATS_BILINEAR = {  # protocol: the fine-grained metrics on which WRC beats bilinear (README, synthetic.md)
    "davis": ("jf_mean", "f_mean"), "spair": ("pck@0.05", "pck@0.01"), "object_discovery": ("corloc",),
    "salient": ("max_f", "iou")}


def claimed(protocol: str, metric: str, higher_is_better: bool = True) -> set[tuple[str, str]]:
    """(better, worse) pairs claimed in every seed among the rows the committed records mark as ranked."""
    seeds = seed_records(FOLDERS, protocol)
    assert len(seeds) == 3 and all(seeds), f"three seed folders with {protocol} records"
    ranked = {name for name, record in seeds[0].items() if (record.training or {}).get("ranked") is not False}
    table = summarise(seeds, [metric])
    return {(c.better, c.worse) for c in claims(table, metric, higher_is_better, ranked) if c.every_seed}


@pytest.mark.parametrize("metric, higher_is_better", [("cosine", True), ("rel_l2", False)])
def test_the_field_ranking_the_readme_states_holds_in_every_committed_seed(metric, higher_is_better):
    assert set(FIELD_ORDER) <= claimed("synthetic", metric, higher_is_better)


@pytest.mark.parametrize("protocol, metric", [(p, m) for p, ms in GUIDED_BEATS_BILINEAR.items() for m in ms])
def test_wrc_beats_bilinear_on_every_dense_tasks_fine_metric_in_every_committed_seed(protocol, metric):
    assert ("wrc", "bilinear") in claimed(protocol, metric)
