"""Tables from records: generic over protocols' table specs, mean and std over runs, paper tables as data."""

from __future__ import annotations

import pytest

from evaluation.records import ResultRecord, collect, write_record
from evaluation.tables import PAPER_TABLES, build_table, main, paper_table


def write_run(path, protocol, dataset, upsampler, metrics, seed=0, resolution=None):
    write_record(ResultRecord(protocol=protocol, dataset={"name": dataset, "split": "val", "root": None},
                              backbone={"name": "test_vit"}, upsampler={"kwargs": {}, "step": None, **upsampler},
                              resolution=resolution or {}, metrics=metrics, config={"seed": seed}), path)


def test_segmentation_table_mean_and_std_over_seeds(tmp_path):
    write_run(tmp_path / "a", "probe_segmentation", "voc2012", {"name": "bilinear"}, {"miou": 0.80}, seed=0)
    write_run(tmp_path / "b", "probe_segmentation", "voc2012", {"name": "bilinear"}, {"miou": 0.82}, seed=1)
    write_run(tmp_path / "c", "probe_segmentation", "voc2012", {"name": "wrc", "checkpoint": "runs/w"}, {"miou": 0.85})
    write_run(tmp_path / "d", "probe_segmentation", "ade20k", {"name": "wrc", "checkpoint": "runs/w"}, {"miou": 0.40})
    write_run(tmp_path / "e", "probe_segmentation", "voc2012", {"name": "wrc", "checkpoint": "runs/v"}, {"miou": 0.70})
    markdown, table_csv = build_table(collect([tmp_path]).records, "segmentation")  # alias of probe_segmentation
    lines = markdown.splitlines()
    assert lines[0] == "| upsampler | ade20k | voc2012 |"
    assert lines[2:] == ["| bilinear | - | 81.00 ± 1.00 |", "| wrc (runs/v) | - | 70.00 |",
                         "| wrc (runs/w) | 40.00 | 85.00 |"]
    assert "bilinear,voc2012,miou,0.81" in table_csv and table_csv.strip().splitlines()[1].endswith(",2")


def test_directions_and_units_come_from_the_table_spec(tmp_path):
    write_run(tmp_path / "x", "probe_depth", "nyuv2", {"name": "lift"}, {"d1": 0.7, "rmse": 0.5})
    markdown, _ = build_table(collect([tmp_path]).records, "probe_depth")
    assert markdown.splitlines()[0] == "| upsampler | nyuv2 d1 (%) ↑ | nyuv2 rmse (m) ↓ |"
    assert markdown.splitlines()[2] == "| lift | 70.00 | 0.5000 |"


def test_ranked_tables_put_the_best_first_by_its_direction(tmp_path):
    for name, cosine in (("a", 0.90), ("b", 0.95), ("c", 0.80)):
        write_run(tmp_path / name, "synthetic", "synthetic_scenes", {"name": name},
                  {"cosine": cosine, "rel_l2": 0.1, "cosine_2x": 0.9, "miou": 0.9, "boundary_f": 0.9})
    markdown, _ = build_table(collect([tmp_path]).records, "synthetic")
    assert [line.split(" | ")[0] for line in markdown.splitlines()[2:]] == ["| b", "| a", "| c"]


def test_rows_that_are_not_ranked_come_after_every_ranked_row(tmp_path):
    metrics = {"rel_l2": 0.1, "cosine_2x": 0.9, "miou": 0.9, "boundary_f": 0.9}
    for name, cosine, ranked in (("a", 0.90, True), ("under budget", 0.99, False), ("c", 0.80, True)):
        record = ResultRecord(protocol="synthetic", dataset={"name": "synthetic_scenes", "split": None, "root": None},
                              backbone={"name": "oracle"}, resolution={},
                              upsampler={"name": "x", "kwargs": {}, "step": None, "label": name},
                              metrics={"cosine": cosine, **metrics}, training={"ranked": ranked})
        write_record(record, tmp_path / name.replace(" ", "_"))
    markdown, _ = build_table(collect([tmp_path]).records, "synthetic")
    assert [line.split(" | ")[0] for line in markdown.splitlines()[2:]] == ["| a", "| c", "| under budget"]


def test_cli_writes_markdown_and_csv_and_reports_skipped_files(tmp_path, capsys):
    write_run(tmp_path / "runs" / "x", "fidelity", "samples", {"name": "lift"}, {"cosine": 0.9, "rel_l2": 0.2})
    (tmp_path / "runs" / "y").mkdir()
    (tmp_path / "runs" / "y" / "result.json").write_text("{torn")
    assert main(["fidelity", str(tmp_path / "runs"), "--out", str(tmp_path / "tables" / "fid")]) == 0
    captured = capsys.readouterr()
    assert "| upsampler | cosine ↑ | rel_l2 ↓ |" in captured.out and "| lift | 0.9000 | 0.2000 |" in captured.out
    assert "1 result file(s) could not be read" in captured.out and "runs/y/result.json" in captured.err
    assert (tmp_path / "tables" / "fid.md").exists() and (tmp_path / "tables" / "fid.csv").exists()


def test_missing_results_are_clear_errors():
    with pytest.raises(ValueError, match="no probe_segmentation results found"):
        build_table([], "segmentation")
    with pytest.raises(ValueError, match="metric 'mlou' is not a column"):
        build_table([], "segmentation", ["mlou"])


def test_paper_table_by_name_filters_datasets_and_notes_missing_parts(tmp_path, capsys):
    write_run(tmp_path / "a", "probe_segmentation", "coco_stuff27", {"name": "bilinear"},
              {"miou": 0.40, "pixel_accuracy": 0.70})
    write_run(tmp_path / "b", "probe_segmentation", "voc2012", {"name": "bilinear"}, {"miou": 0.80})
    markdown, table_csv = paper_table(collect([tmp_path]).records, "featup-table1")
    assert "**probe_segmentation (coco_stuff27)**" in markdown and "| bilinear | 40.00 | 70.00 |" in markdown
    assert "voc2012" not in markdown and "**probe_depth (nyuv2)**: no results yet" in markdown
    assert "coco_stuff27,miou" in table_csv
    with pytest.raises(ValueError, match="no results found for any part of srt-table2"):
        paper_table(collect([tmp_path]).records, "srt-table2")
    assert main(["featup-table1", str(tmp_path)]) == 0 and "coco_stuff27 pixel_accuracy" in capsys.readouterr().out
    assert {"wrc-table1", "featup-table1", "srt-table2", "jafar-probes", "synthetic"} <= set(PAPER_TABLES)


def test_the_committed_synthetic_results_still_tabulate():
    from tests.conftest import REPO_ROOT

    found = collect([REPO_ROOT / "benchmarks" / "results" / "synthetic"])
    assert not found.skipped and len(found.records) >= 10
    markdown, _ = build_table(found.records, "synthetic")
    assert markdown.splitlines()[2].startswith("| ground_truth | 1.0000")


def test_runs_on_different_backbones_are_never_averaged(tmp_path):
    for name, backbone, cosine in (("a", "vit_s", 0.9), ("b", "vit_b", 0.7)):
        write_record(ResultRecord(protocol="fidelity", dataset={"name": "samples", "split": None, "root": None},
                                  backbone={"name": backbone}, upsampler={"name": "bilinear", "kwargs": {}},
                                  resolution={}, metrics={"cosine": cosine, "rel_l2": 0.1}), tmp_path / name)
    markdown, _ = build_table(collect([tmp_path]).records, "fidelity")
    assert markdown.splitlines()[2:] == ["| bilinear @ vit_b | 0.7000 | 0.1000 |",
                                         "| bilinear @ vit_s | 0.9000 | 0.1000 |"]


def test_resolutions_a_protocol_splits_by_are_columns_in_numeric_order_never_averaged(tmp_path):
    for size, pck in ((224, 0.30), (56, 0.05), (112, 0.15), (224, 0.32)):  # two seeds at 224
        write_run(tmp_path / f"{size}_{int(pck * 100)}", "spair", "spair71k", {"name": "lift"},
                  {"pck@0.1": pck, "pck@0.05": pck / 2, "pck@0.01": pck / 10}, resolution={"image_size": size})
    markdown, table_csv = paper_table(collect([tmp_path]).records, "lift-table1")
    header, _, row = markdown.split("\n\n", 1)[1].splitlines()
    assert header.startswith("| upsampler | spair71k 56 pck@0.1 (%) ↑ | spair71k 56 pck@0.05 (%) ↑ |")
    assert header.index("spair71k 56 ") < header.index("spair71k 112 ") < header.index("spair71k 224 ")
    assert row.startswith("| lift | 5.00 | 2.50 | 0.50 | 15.00 | 7.50 | 1.50 | 31.00 ± 1.00 |")
    assert "lift,spair71k 224,pck@0.1,0.31" in table_csv


def test_every_paper_table_names_registered_protocols_and_their_columns():
    from evaluation.protocol import get_protocol

    for parts in PAPER_TABLES.values():
        for part in parts:
            spec = get_protocol(part.protocol).table
            for metric in part.metrics:
                spec.column(metric)  # raises for a metric the protocol does not declare
