"""Tables from result JSONs: grouping by upsampler and dataset, mean and std over seeds, md and csv."""

from __future__ import annotations

import json

import pytest

from evaluation.tables import build_table, collect, main


def write_probe(path, model, dataset, seed, miou, d1=None):
    path.mkdir(parents=True, exist_ok=True)
    kind = "depth" if d1 is not None else "segmentation"
    metrics = {"d1": d1, "rmse": 0.5} if d1 is not None else {"miou": miou}
    (path / "result.json").write_text(json.dumps({
        "protocol": f"linear_probe_{kind}", "dataset": dataset, "model": model, "seed": seed, "metrics": metrics}))


def test_segmentation_table_mean_and_std_over_seeds(tmp_path):
    write_probe(tmp_path / "a", {"name": "bilinear"}, "voc2012", 0, 0.80)
    write_probe(tmp_path / "b", {"name": "bilinear"}, "voc2012", 1, 0.82)
    write_probe(tmp_path / "c", {"name": "wrc", "checkpoint": "/runs/wrc_run"}, "voc2012", 0, 0.85)
    write_probe(tmp_path / "d", {"name": "wrc", "checkpoint": "/runs/wrc_run"}, "ade20k", 0, 0.40)
    (tmp_path / "junk.json").write_text("{not json")
    markdown, table_csv = build_table(collect([tmp_path]), "segmentation", ["miou"])
    lines = markdown.splitlines()
    assert lines[0] == "| upsampler | ade20k | voc2012 |"
    assert lines[2] == "| bilinear | - | 81.00 ± 1.00 |"
    assert lines[3] == "| wrc (wrc_run) | 40.00 | 85.00 |"
    assert "bilinear,voc2012,0.81" in table_csv and table_csv.strip().splitlines()[1].endswith(",2")


def test_cli_writes_markdown_and_csv(tmp_path, capsys):
    write_probe(tmp_path / "runs" / "x", {"name": "lift"}, "nyuv2", 0, None, d1=0.7)
    assert main(["depth", str(tmp_path / "runs"), "--out", str(tmp_path / "tables" / "depth")]) == 0
    out = capsys.readouterr().out
    assert "| upsampler | nyuv2 d1 | nyuv2 rmse |" in out and "| lift | 0.7000 | 0.5000 |" in out
    assert (tmp_path / "tables" / "depth.md").exists() and (tmp_path / "tables" / "depth.csv").exists()


def test_missing_results_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        collect([tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="no segmentation results found"):
        build_table([], "segmentation", ["miou"])


def test_fidelity_table_from_fidelity_records(tmp_path):
    for seed, cosine in ((0, 0.90), (1, 0.92)):
        (tmp_path / f"run{seed}").mkdir()
        (tmp_path / f"run{seed}" / "metrics.json").write_text(json.dumps({
            "protocol": "fidelity", "results": {"bilinear": {"cosine": 0.8, "rel_l2": 0.3},
                                                "wrc": {"cosine": cosine, "rel_l2": 0.2}}}))
    markdown, _ = build_table(collect([tmp_path]), "fidelity", ["cosine"])
    assert markdown.splitlines()[2:] == ["| bilinear | 0.8000 ± 0.0000 |", "| wrc | 0.9100 ± 0.0100 |"]


def test_paper_table_by_name_filters_datasets_and_notes_missing_parts(tmp_path, capsys):
    from evaluation.tables import PAPER_TABLES, paper_table

    write_probe(tmp_path / "a", {"name": "bilinear"}, "coco_stuff27", 0, 0.40)
    write_probe(tmp_path / "b", {"name": "bilinear"}, "voc2012", 0, 0.80)  # not part of FeatUp's Table 1
    (tmp_path / "a" / "result.json").write_text(json.dumps({
        "protocol": "linear_probe_segmentation", "dataset": "coco_stuff27", "model": {"name": "bilinear"},
        "metrics": {"miou": 0.40, "pixel_accuracy": 0.70}}))
    markdown, table_csv = paper_table(collect([tmp_path]), "featup-table1")
    assert "**segmentation (coco_stuff27)**" in markdown and "| bilinear | 40.00 | 70.00 |" in markdown
    assert "voc2012" not in markdown and "**depth (nyuv2)**: no results yet" in markdown
    assert "coco_stuff27 miou" in table_csv
    with pytest.raises(ValueError, match="no results found for any part of srt-table2"):
        paper_table(collect([tmp_path]), "srt-table2")
    assert main(["featup-table1", str(tmp_path)]) == 0 and "coco_stuff27 pixel_accuracy" in capsys.readouterr().out
    assert {"wrc-table1", "featup-table1", "srt-table2", "jafar-probes", "synthetic"} <= set(PAPER_TABLES)
