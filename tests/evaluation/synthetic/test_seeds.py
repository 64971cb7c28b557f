"""The benchmark over seeds: mean and sample spread per method, and claims only where the gap of the means exceeds
twice the larger spread, on hand-made records with known values."""

from __future__ import annotations

import json
import statistics

import pytest

from evaluation.records import ResultRecord, write_record
from evaluation.synthetic import seeds

METRICS = ("cosine", "rel_l2", "cosine_2x", "miou", "boundary_f")


def write_seed(folder, scores: dict[str, float], unranked=()) -> None:
    """One seed's field records: every headline metric of a method = its score (rel_l2 = 1 - score)."""
    for name, score in scores.items():
        metrics = dict.fromkeys(METRICS, score) | {"rel_l2": 1 - score}
        record = ResultRecord(protocol="synthetic", dataset={"name": "synthetic", "split": "test", "root": None},
                              backbone={"name": "synthetic_oracle"}, upsampler={"name": name, "label": name},
                              resolution={}, metrics=metrics, training={"ranked": name not in unranked})
        write_record(record, folder / f"{name}.json")


@pytest.fixture
def three_seeds(tmp_path):
    values = {"a": (0.90, 0.91, 0.92), "b": (0.80, 0.81, 0.79), "c": (0.895, 0.90, 0.91), "d": (0.95, 0.96, 0.97)}
    folders = []
    for seed in range(3):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        scores = {name: v[seed] for name, v in values.items()}
        if seed == 2:
            scores.pop("c")  # c has two seeds only: it is summarised, and never in a claim against 3-seed rows
        write_seed(folder, scores, unranked=("d",))
        folders.append(folder)
    return folders, values


def test_mean_and_sample_spread_per_method(three_seeds):
    folders, values = three_seeds
    table = seeds.summarise(seeds.seed_records(folders, "synthetic"), list(METRICS))
    assert table["a"]["cosine"].mean == pytest.approx(0.91)
    assert table["a"]["cosine"].spread == pytest.approx(0.01)  # sample sd of 0.90, 0.91, 0.92
    assert table["b"]["rel_l2"].spread == pytest.approx(statistics.stdev([0.2, 0.19, 0.21]))
    assert table["c"]["cosine"].values == (0.895, 0.90)


def test_claims_need_a_gap_of_twice_the_spread_and_ranked_rows_with_the_same_seeds(three_seeds):
    folders, _ = three_seeds
    table = seeds.summarise(seeds.seed_records(folders, "synthetic"), list(METRICS))
    found = {(c.better, c.worse): c for c in seeds.claims(table, "cosine", True, {"a", "b", "c"})}
    assert set(found) == {("a", "b")}  # gap 0.11 > 2 x 0.01; c: two seeds only; d: unranked
    assert found[("a", "b")].every_seed and found[("a", "b")].gap == pytest.approx(0.11)
    lower = {(c.better, c.worse) for c in seeds.claims(table, "rel_l2", False, {"a", "b"})}
    assert lower == {("a", "b")}  # lower is better: a's rel_l2 0.09 beats b's 0.2
    close = {"a": table["a"], "e": {"cosine": seeds.Summary(0.905, 0.01, (0.89, 0.915, 0.91))}}
    assert seeds.claims(close, "cosine", True, {"a", "e"}) == []  # gap 0.005 < 2 x 0.01


def test_a_claim_can_hold_on_the_means_but_not_in_every_seed():
    table = {"a": {"cosine": seeds.Summary(0.9, 0.001, (0.899, 0.9, 0.901))},
             "b": {"cosine": seeds.Summary(0.8, 0.04, (0.75, 0.8, 0.85))}}
    (claim,) = seeds.claims(table, "cosine", True, {"a", "b"})
    assert claim.gap == pytest.approx(0.1) and claim.spread == 0.04 and claim.every_seed
    table["b"] = {"cosine": seeds.Summary(0.8, 0.0001, (0.8, 0.8, 0.8))}
    table["a"] = {"cosine": seeds.Summary(0.9, 0.0001, (0.9, 0.9, 0.79))}  # means as stated, seed 3 reversed
    (claim,) = seeds.claims(table, "cosine", True, {"a", "b"})
    assert not claim.every_seed


def test_the_report_ranks_puts_unranked_rows_last_and_writes_both_files(three_seeds, tmp_path):
    folders, _ = three_seeds
    out = tmp_path / "out" / "seeds"
    assert seeds.main([*map(str, folders), "--protocols", "synthetic", "davis", "--out", str(out)]) == 0
    markdown = out.with_suffix(".md").read_text()
    rows = [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines() if line.startswith("| ")][2:]
    assert rows == ["a", "c", "b", "d"]  # by mean cosine, the unranked d (0.96) last
    assert "| a | 3 | 0.9100 ± 0.0100 |" in markdown and "| c | 2 |" in markdown
    assert "- **cosine**: a > b*" in markdown
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["synthetic"]["claims"]["cosine"][0]["better"] == "a" and "davis" not in record


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(SystemExit):
        seeds.main([str(tmp_path / "missing")])
