"""One result record for every protocol: what was evaluated, on what, by which code, with which numbers.

Every evaluation writes exactly one ``ResultRecord`` as JSON (``run_dir/result.json`` by default), and
tables are built from these files alone (never from logs). The schema is versioned; records written
before the schema existed (version 0: the old probe, fidelity and synthetic JSONs) are read through
``upgrade`` so that old result folders still tabulate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrc.checkpoint import atomic_write_text

log = logging.getLogger("wrc")

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
RUN_FILES = ("config.json", "upsampler.json", "metrics.json")  # JSON files of a run that are never records


def is_run_file(path: Path) -> bool:
    return path.name in RUN_FILES or path.name.startswith("config.")  # config.step_N.json: kept by a resume


@dataclass
class ResultRecord:
    """One evaluation of one extractor by one protocol.

    Attributes:
        protocol: the registered protocol name (``fidelity``, ``probe_segmentation``, ...).
        dataset: ``{"name", "split", "root"}`` (root None for generated data).
        backbone: the backbone's ``spec()``: name, weights, layer, facet, final_norm, size_policy, precision.
        upsampler: ``{"name", "kwargs", "checkpoint", "step"}`` (checkpoint and step None for untrained methods),
            and ``label`` where the caller named the row (the synthetic benchmark's ablations).
        resolution: image size, output size and size policy, as the protocol applied them.
        metrics: headline numbers (floats; fractions, not percentages).
        per_item: per class, per sequence or per category results, where the protocol has them.
        config: the protocol's settings after defaults were applied.
        training: how the upsampler was trained, where the caller knows (objective, steps, seconds, parameters).
        code_version: ``{"version", "commit", "dirty"}`` (wrc.provenance).
        device, seconds, timestamp, command: where, how long, when, and the command as a user types it.
    """

    protocol: str
    dataset: dict[str, Any]
    backbone: dict[str, Any]
    upsampler: dict[str, Any]
    resolution: dict[str, Any]
    metrics: dict[str, Any]
    per_item: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    code_version: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    seconds: float | None = None
    timestamp: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    command: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def label(self) -> str:
        """The row label in tables: the method's name, plus the checkpoint it was loaded from (two checkpoints of
        one method are two rows)."""
        return upsampler_label(self.upsampler)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRecord:
        data = upgrade(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"result record has unknown keys {unknown}; expected a subset of {sorted(names)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"result record lacks the keys {missing}")
        return cls(**data)


def upsampler_label(upsampler: Mapping[str, Any]) -> str:
    """``bilinear``, or ``lift (outputs/lift_run, step 300)`` for a checkpoint; an explicit ``label`` wins."""
    if upsampler.get("label"):
        return str(upsampler["label"])
    checkpoint = upsampler.get("checkpoint")
    if not checkpoint:
        return str(upsampler["name"])
    step = upsampler.get("step")
    return f"{upsampler['name']} ({checkpoint}{f', step {step}' if step is not None else ''})"


def write_record(record: ResultRecord, path: str | os.PathLike) -> Path:
    """Write ``record`` as JSON, atomically (a reader sees the old file or the new one, never half of one); a
    directory gets ``result.json`` inside it."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, default=str) + "\n")
    return path


def read_record(path: str | os.PathLike) -> ResultRecord:
    return ResultRecord.from_dict(json.loads(Path(path).read_text()))


@dataclass
class Collection:
    """The records found under some folders, and the JSON files that looked like records but could not be read."""

    records: list[ResultRecord]
    skipped: list[tuple[Path, str]]


def collect(roots: Iterable[str | os.PathLike]) -> Collection:
    """Every result record under ``roots`` (searched recursively). JSON files that are not records (configs,
    checkpoint metadata) are ignored; torn or invalid record files are listed in ``skipped`` with the reason."""
    records, skipped = [], []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"no such run directory: {root}")
        for path in sorted(root.rglob("*.json")) if root.is_dir() else [root]:
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                if not is_run_file(path):  # a torn record must not vanish from a table unnoticed
                    skipped.append((path, f"not valid JSON ({err})"))
                continue
            if not isinstance(data, dict) or "protocol" not in data:
                continue
            try:
                records.append(ResultRecord.from_dict(data))
            except (ValueError, TypeError, KeyError) as err:
                skipped.append((path, str(err)))
    return Collection(records, skipped)


# --- records written before the schema (version 0) ------------------------------------------------------------

def upgrade(data: Mapping[str, Any]) -> dict[str, Any]:
    """A record of any schema version as a version-1 dict (unchanged when it already is one)."""
    data = dict(data)
    version = data.get("schema_version", 0)
    if version == SCHEMA_VERSION:
        return data
    if version != 0:
        raise ValueError(f"result record schema_version={version}; this code reads 0 and {SCHEMA_VERSION}")
    protocol = data.get("protocol")
    if protocol in ("linear_probe_segmentation", "linear_probe_depth"):
        return _upgrade_probe(data)
    if protocol == "synthetic":
        return _upgrade_synthetic(data)
    raise ValueError(f"a version-0 record of protocol {protocol!r} cannot be upgraded (only probe and synthetic "
                     "records had one record per method; rerun the evaluation)")


def _model_to_upsampler(model: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in model.items() if k not in ("name", "checkpoint")}
    return {"name": model["name"], "kwargs": kwargs, "checkpoint": model.get("checkpoint"), "step": None}


def _upgrade_probe(data: dict[str, Any]) -> dict[str, Any]:
    metrics = dict(data["metrics"])
    per_class = metrics.pop("per_class_iou", None)
    kind = data["protocol"].removeprefix("linear_probe_")
    return {
        "protocol": f"probe_{kind}", "dataset": {"name": data["dataset"], "split": None, "root": None},
        "backbone": data.get("backbone", {}), "upsampler": _model_to_upsampler(data["model"]),
        "resolution": {"image_size": data.get("image_size")}, "metrics": metrics,
        "per_item": {"per_class_iou": per_class} if per_class is not None else {},
        "config": {"probe_protocol": data.get("probe_protocol"), "epochs": data.get("epochs"),
                   "batch_size": data.get("batch_size"), "seed": data.get("seed")},
        "timestamp": data.get("timestamp", ""), "schema_version": SCHEMA_VERSION,
    }


def _upgrade_synthetic(data: dict[str, Any]) -> dict[str, Any]:
    metrics = dict(data["metrics"])
    per_class = metrics.pop("per_class_iou", None)
    setting = data.get("setting", {})
    return {
        "protocol": "synthetic", "dataset": {"name": "synthetic_scenes", "split": "test", "root": None},
        "backbone": data.get("backbone", {}), "upsampler": _model_to_upsampler(data["model"]),
        "resolution": {"image_size": setting.get("image_size")}, "metrics": metrics,
        "per_item": {"per_class_iou": per_class} if per_class is not None else {},
        "config": {k: setting[k] for k in ("image_size", "test_scenes", "seed") if k in setting},
        "training": {"objective": data.get("objective"), "train_seconds": data.get("train_seconds"),
                     "parameters": data.get("parameters"), "training": setting},
        "timestamp": data.get("timestamp", ""), "schema_version": SCHEMA_VERSION,
    }
