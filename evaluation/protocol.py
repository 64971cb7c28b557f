"""The evaluation contract: a protocol is a registered class that scores one DenseFeatureExtractor.

    class Fidelity(Protocol):
        name = "fidelity"
        Settings = FidelitySettings            # a dataclass: its defaults are the only defaults
        table = TableSpec(columns=(...), headline=("cosine", "rel_l2"))
        def run(self, extractor, settings, run_dir) -> Evaluation: ...

``evaluate(name, extractor, settings, run_dir)`` validates the settings (unknown keys are errors),
runs the protocol, and writes one ResultRecord (evaluation/records.py) to ``run_dir/result.json``.
Protocols live one per module in evaluation/protocols/ and are found there by the registry; each has
one YAML in config/eval/protocol/ for the Hydra entry point (``python -m evaluation protocol=<name>``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from evaluation.records import ResultRecord, write_record
from evaluation.synthetic.oracle import OracleBackbone
from wrc.extractor import DenseFeatureExtractor
from wrc.provenance import code_version, command_line, device_name
from wrc.registry import Registry
from wrc.settings import settings_from_mapping

log = logging.getLogger("wrc")


@dataclass(frozen=True)
class Column:
    """One metric as tables show it: ``percent`` columns are fractions shown x100."""

    metric: str
    higher_is_better: bool = True
    percent: bool = False
    unit: str = ""

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


@dataclass(frozen=True)
class TableSpec:
    """How a protocol's records become a table: rows are upsamplers; columns are ``headline`` metrics (per dataset
    when ``per_dataset``, and per value of each ``split_by`` key of the records' ``resolution``: SPair at 56, 112,
    224 and 448 pixels are four columns, never one average); ``rank_by`` sorts rows best first by that metric
    (alphabetical otherwise)."""

    columns: tuple[Column, ...]
    headline: tuple[str, ...]
    per_dataset: bool = True
    rank_by: str | None = None
    split_by: tuple[str, ...] = ()

    def column(self, metric: str) -> Column:
        for column in self.columns:
            if column.metric == metric:
                return column
        raise ValueError(f"metric {metric!r} is not a column of this table; known: {[c.metric for c in self.columns]}")


@dataclass
class Evaluation:
    """What ``Protocol.run`` returns: the numbers, and the facts about the data the record needs."""

    metrics: dict[str, Any]
    dataset: dict[str, Any]
    resolution: dict[str, Any] = field(default_factory=dict)
    per_item: dict[str, Any] = field(default_factory=dict)
    completed: bool = True  # False: stopped early on purpose (resumable); no record is written


class Protocol:
    """Base class of every protocol (see the module docstring)."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = object
    table: ClassVar[TableSpec]

    def settings(self, given: Mapping[str, Any] | Any = None) -> Any:
        """The protocol's settings from a mapping (defaults filled in, unknown keys refused) or a Settings."""
        if isinstance(given, self.Settings):
            return given
        return settings_from_mapping(self.Settings, dict(given or {}), "protocol")

    def make_backbone(self, settings: Any) -> torch.nn.Module | None:
        """A backbone of the protocol's own, or None to use the configured one. The convention of every protocol
        with a ground-truth version: ``dataset="synthetic"`` runs on the synthetic benchmark's oracle backbone."""
        if getattr(settings, "dataset", None) == "synthetic":
            return OracleBackbone()
        return None

    def run(self, extractor: DenseFeatureExtractor, settings: Any, run_dir: Path) -> Evaluation:
        raise NotImplementedError


PROTOCOLS: Registry[type[Protocol]] = Registry("evaluation protocol", "protocol", package="evaluation.protocols")
register_protocol = PROTOCOLS.register


def list_protocols() -> list[str]:
    return PROTOCOLS.names()


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)()


def evaluate(protocol: str | Protocol, extractor: DenseFeatureExtractor, settings: Mapping[str, Any] | Any,
             run_dir: str | os.PathLike, *, record_path: str | os.PathLike | None = None,
             label: str | None = None, training: Mapping[str, Any] | None = None,
             command: str | None = None) -> ResultRecord | None:
    """Run ``protocol`` on ``extractor`` and write its record (``run_dir/result.json`` unless ``record_path``);
    ``label`` names the row in tables (default: the upsampler's name and checkpoint), ``training`` says how the
    upsampler was trained (default: what its checkpoint's metadata says), ``command`` how this run is typed
    (default: this process's command line; a sweep's jobs pass their own). None when the protocol
    stopped early on purpose (a time-limited job): the same call resumes it."""
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    settings = protocol.settings(settings)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = extractor.device
    tick = time.perf_counter()
    outcome = protocol.run(extractor.eval(), settings, run_dir)  # protocols that train a head enable grad there
    if not outcome.completed:
        return None
    upsampler = extractor.upsampler_spec() | ({"label": label} if label else {})
    record = ResultRecord(
        protocol=protocol.name, dataset=outcome.dataset, backbone=extractor.backbone.spec(),
        upsampler=upsampler, resolution=outcome.resolution, metrics=outcome.metrics,
        per_item=outcome.per_item, config=dataclasses.asdict(settings),
        training=dict(training) if training is not None else extractor.training_info(),
        code_version=code_version(),
        device=device_name(device), seconds=round(time.perf_counter() - tick, 3), command=command or command_line(),
    )
    path = write_record(record, record_path or run_dir)
    log.info("%s %s: %s -> %s", protocol.name, record.label, _headline(protocol, record.metrics), path)
    return record


def _headline(protocol: Protocol, metrics: Mapping[str, Any]) -> str:
    return "  ".join(f"{m} {metrics[m]:.4f}" for m in protocol.table.headline if isinstance(metrics.get(m), float))
