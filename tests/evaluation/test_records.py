"""The one result record: round trip, schema checks, labels, version-0 records, and collecting result folders."""

from __future__ import annotations

import json

import pytest

from evaluation.records import SCHEMA_VERSION, ResultRecord, collect, read_record, upgrade, write_record


def record(**changes) -> ResultRecord:
    fields = {"protocol": "fidelity", "dataset": {"name": "samples", "split": "held_out", "root": None},
              "backbone": {"name": "test_vit"}, "upsampler": {"name": "bilinear", "kwargs": {}, "checkpoint": None,
                                                              "step": None},
              "resolution": {"image_size": 64}, "metrics": {"cosine": 0.9, "rel_l2": 0.3}}
    return ResultRecord(**{**fields, **changes})


def test_a_record_round_trips_and_carries_its_schema_version(tmp_path):
    written = record(per_item={"per_class_iou": [0.5, None]}, seconds=1.5)
    path = write_record(written, tmp_path / "run")
    assert path == tmp_path / "run" / "result.json"
    assert read_record(path) == written and json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporary file left


def test_labels_tell_checkpoints_apart_and_a_label_wins():
    assert record().label == "bilinear"
    ckpt = {"name": "lift", "kwargs": {}, "checkpoint": "runs/a", "step": 300}
    assert record(upsampler=ckpt).label == "lift (runs/a, step 300)"
    assert record(upsampler={**ckpt, "label": "lift_paper"}).label == "lift_paper"


def test_unknown_missing_and_future_keys_are_refused():
    data = record().to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        ResultRecord.from_dict({**data, "extra": 1})
    with pytest.raises(ValueError, match=r"lacks the keys \['metrics'\]"):
        ResultRecord.from_dict({k: v for k, v in data.items() if k != "metrics"})
    with pytest.raises(ValueError, match="schema_version=99"):
        ResultRecord.from_dict({**data, "schema_version": 99})


def test_version_0_probe_and_synthetic_records_are_upgraded():
    probe = upgrade({"protocol": "linear_probe_segmentation", "dataset": "voc2012", "model": {
        "name": "wrc", "checkpoint": "/runs/w", "image_channels": 32}, "metrics": {"miou": 0.5, "per_class_iou": [1]},
        "seed": 1, "backbone": {"name": "b"}})
    assert probe["protocol"] == "probe_segmentation" and probe["dataset"]["name"] == "voc2012"
    assert probe["upsampler"] == {"name": "wrc", "kwargs": {"image_channels": 32}, "checkpoint": "/runs/w",
                                  "step": None}
    assert probe["metrics"] == {"miou": 0.5} and probe["per_item"] == {"per_class_iou": [1]}
    synthetic = ResultRecord.from_dict({"protocol": "synthetic", "model": {"name": "wrc_paper_network"},
                                        "metrics": {"cosine": 0.9}, "setting": {"image_size": 128, "steps": 200}})
    assert synthetic.label == "wrc_paper_network" and synthetic.training["training"]["steps"] == 200
    with pytest.raises(ValueError, match="a version-0 record of protocol 'fidelity' cannot be upgraded"):
        upgrade({"protocol": "fidelity", "results": {}})


def test_collect_reports_torn_records_and_ignores_other_json(tmp_path):
    write_record(record(), tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "result.json").write_text('{"protocol": "fidelity", "datas')  # torn by a crash
    (tmp_path / "b" / "config.json").write_text(json.dumps({"seed": 0}))  # not a record
    found = collect([tmp_path])
    assert [r.label for r in found.records] == ["bilinear"]
    assert [(p.parent.name, "not valid JSON" in why) for p, why in found.skipped] == [("b", True)]
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        collect([tmp_path / "nowhere"])
