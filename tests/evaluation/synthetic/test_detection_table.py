"""The ground-truth detection table at a tiny size: one record per row through the detection protocol (the right
pyramid, the upsampler trained first for a learned row), the table file, and finished rows read back."""

from __future__ import annotations

import pytest

from evaluation.records import read_record
from evaluation.synthetic import detection_table


def tiny_args(tmp_path, *extra: str) -> list[str]:
    return ["--size", "64", "--train-images", "4", "--val-images", "2", "--steps", "2", "--batch-size", "2",
            "--upsampler-steps", "1", "--upsampler-image-size", "64", "--upsampler-batch-size", "2",
            "--train-scenes", "4", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *extra]


@pytest.mark.slow  # three detectors and one upsampler: ~15 s on two cores
def test_a_tiny_table_trains_each_row_and_reads_finished_rows_back(tmp_path, monkeypatch):
    variants = ["--variants", "tconv", "ground_truth", "lift"]
    assert detection_table.main(tiny_args(tmp_path, *variants)) == 0
    records = {v: read_record(tmp_path / "out" / f"{v}.json") for v in ("tconv", "ground_truth", "lift")}
    assert records["tconv"].resolution["pyramid"] == "tconv"
    assert records["ground_truth"].resolution["pyramid"] == "upsampler"
    assert records["lift"].upsampler["checkpoint"] is not None  # trained first, then frozen in the detector
    assert records["lift"].training["objective"] == "lift_multiscale" and records["lift"].training["steps"] == 1
    for record in records.values():
        assert record.backbone["patch_size"] == 16 and record.dataset["name"] == "synthetic_detection"
        assert 0 <= record.metrics["box_ap"] <= 1 and 0 <= record.metrics["mask_ap"] <= 1
    table = (tmp_path / "out" / "detection.md").read_text()
    assert "- command: `" in table and "- commit: " in table
    assert all(f"| {v} |" in table for v in records)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished row was run again")

    monkeypatch.setattr(detection_table, "evaluate", refuse)
    assert detection_table.main(tiny_args(tmp_path, *variants)) == 0  # every row read back
    with pytest.raises(AssertionError, match="run again"):  # another budget is another row
        detection_table.main(tiny_args(tmp_path, "--variants", "tconv", "--lr", "0.01"))


def test_bad_sizes_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        detection_table.parse_args(["--size", "96"])
    assert "--size must be a multiple of 64" in capsys.readouterr().err
