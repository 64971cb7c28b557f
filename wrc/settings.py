"""Every training setting's default and check, in one place.

config/train.yaml and config/optimizer/adamw.yaml restate none of these values: train_wrc.py registers the
dataclasses below in Hydra's ConfigStore and those files pull them in through their defaults lists, so
``--cfg job`` shows every value and Hydra refuses a misspelt or mistyped override. ``wrc.training.train`` reads
its plain dict through ``RunSettings.from_mapping``, which applies the same defaults, refuses unknown keys
(listing the valid ones) and checks every value before anything is built, so a bad setting fails at start
with its key named instead of as a ZeroDivisionError (or a silent run) later.

The groups backbone/, model/, objective/ and data/ are constructor arguments, checked by those constructors;
only what ``train`` itself reads from them (``data.batch_size``, ``data.num_workers``) is checked here.
This module is plain Python: the library never imports Hydra.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

S = TypeVar("S", bound="Section")
T = TypeVar("T")
_MISSING = "(absent)"

# Keys a resumed run may change: where it writes and logs, and how far it goes. Everything else (seed,
# precision, backbone, model, objective, data, optimizer, grad_clip, ...) shapes the losses, so a resume
# that changes it is refused unless resume_allow_changes=true. data.num_workers does not change the data
# (the order and crops are seeded per sample), so a resume may use another machine's cores.
RESUME_MAY_CHANGE = (
    "name", "run_dir", "resume", "resume_allow_changes", "device", "logger", "evaluate",
    "train.max_steps", "train.log_every", "train.ckpt_every", "train.keep_checkpoints", "data.num_workers",
    "objective.init_from",  # read by a fresh run only (LoftUp's stage 2): a moved or re-spelled path changes nothing
)


class SettingsError(ValueError):
    """A training setting is unknown or has a value ``train`` cannot run with; the message names the key."""


def reject_unknown(mapping: Mapping[str, Any], cls: type, prefix: str = "") -> None:
    """Raise ``SettingsError`` naming each key of ``mapping`` that is no field of the dataclass ``cls``."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [str(key) for key in mapping if key not in valid]
    if not unknown:
        return
    where = f"{prefix}." if prefix else ""
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        named.append(f"{where}{key}" + (f" (did you mean {where}{close[0]}?)" if close else ""))
    scope = f"of {prefix}" if prefix else "at the top level"
    raise SettingsError(f"unknown setting {', '.join(named)}; the valid keys {scope} are: {', '.join(sorted(valid))}")


def _describe(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` names (an integral float to int, an int to float), or a SettingsError."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        for option in options:
            try:
                return _coerce(value, option, key)
            except SettingsError:
                pass
        raise SettingsError(f"{key} must be {' or '.join(_describe(o) for o in options)}; got {value!r}")
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SettingsError(f"{key} must be a list of {len(args)} values; got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if typing.get_origin(hint) is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise SettingsError(f"{key} must be a mapping of settings; got {value!r}")
    if hint in (bool, int, float, str):
        raise SettingsError(f"{key} must be {_describe(hint)}; got {value!r}")
    return value


def _values(cls: type, mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The keys of ``mapping``, checked against the fields of ``cls`` and coerced to their types."""
    if not isinstance(mapping, Mapping):
        raise SettingsError(f"{prefix or 'the config'} must be a mapping of settings; got {mapping!r}")
    reject_unknown(mapping, cls, prefix)
    hints = typing.get_type_hints(cls)
    where = f"{prefix}." if prefix else ""
    return {key: _coerce(value, hints[key], f"{where}{key}") for key, value in mapping.items()}


def settings_from_mapping(cls: type[T], mapping: Mapping[str, Any], prefix: str) -> T:
    """The dataclass ``cls`` from ``mapping``: unknown keys refused (with the closest valid one), values coerced to
    the field types, defaults filled in; ``prefix`` is how a user names the section (``protocol``, ``evaluate``)."""
    try:
        return cls(**_values(cls, mapping, prefix))
    except TypeError as err:
        raise SettingsError(f"bad settings for {prefix}: {err}") from None


def require_at_least_one(settings: object, prefix: str, *keys: str) -> None:
    """Raise ``SettingsError`` naming ``prefix.key`` for the first of ``keys`` whose value on ``settings`` is below 1
    (counts and sizes a run cannot be made of zero of)."""
    for key in keys:
        value = getattr(settings, key)
        if int(value) < 1:
            raise SettingsError(f"{prefix}.{key} must be >= 1; got {value}")


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise SettingsError(f"{key} must be {expected}; got {value!r}")


@dataclass
class Section:
    """A flat group of settings (``train.*``, ``optimizer.*``, ``logger.*``): its defaults are its fields."""

    PREFIX: ClassVar[str] = ""

    @classmethod
    def from_mapping(cls: type[S], mapping: Mapping[str, Any] | None) -> S:
        """The settings in ``mapping`` (a missing key takes its default), checked; unknown keys are refused."""
        settings = cls(**_values(cls, {} if mapping is None else mapping, cls.PREFIX))
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ``SettingsError`` for a value of the right type that train() still cannot run with."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainLoop(Section):
    """``train.*``: how long to train, how often to log and checkpoint, gradient clipping."""

    PREFIX: ClassVar[str] = "train"
    max_steps: int = 20000
    log_every: int = 20  # steps between metrics.jsonl lines (the last step is always logged)
    ckpt_every: int = 1000  # steps between checkpoints (the last step always writes one)
    keep_checkpoints: int = 3  # the newest checkpoints kept on disk
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    sync_batchnorm: bool = True  # SyncBatchNorm under multi-GPU DDP

    def check(self) -> None:
        for key in ("max_steps", "log_every", "ckpt_every", "keep_checkpoints"):
            value = getattr(self, key)
            _require(value >= 1, f"train.{key}", "an integer >= 1", value)
        _require(self.grad_clip >= 0, "train.grad_clip", "a number >= 0 (0 disables clipping)", self.grad_clip)


@dataclass
class Optimizer(Section):
    """``optimizer.*`` (config/optimizer/adamw.yaml): AdamW with a cosine (after a linear warm-up) or constant
    learning rate, stepped once per optimisation step."""

    PREFIX: ClassVar[str] = "optimizer"
    name: str = "adamw"
    lr: float = 1.0e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1.0e-4
    scheduler: str = "cosine"  # cosine | constant
    warmup_steps: int = 500  # linear warm-up from lr / warmup_steps; 0 for none
    min_lr_ratio: float = 0.01  # the cosine decays to lr * min_lr_ratio

    def check(self) -> None:
        _require(self.name == "adamw", "optimizer.name", "'adamw'", self.name)
        _require(self.lr > 0, "optimizer.lr", "positive", self.lr)
        _require(all(0 <= b < 1 for b in self.betas), "optimizer.betas", "two numbers in [0, 1)", list(self.betas))
        _require(self.weight_decay >= 0, "optimizer.weight_decay", "a number >= 0", self.weight_decay)
        _require(self.scheduler in ("cosine", "constant"), "optimizer.scheduler", "'cosine' or 'constant'",
                 self.scheduler)
        _require(self.warmup_steps >= 0, "optimizer.warmup_steps", "an integer >= 0 (0: no warm-up)",
                 self.warmup_steps)
        _require(0 <= self.min_lr_ratio <= 1, "optimizer.min_lr_ratio", "a number in [0, 1]", self.min_lr_ratio)


@dataclass
class Logger(Section):
    """``logger.*``: where metrics go besides metrics.jsonl, which is always written in the run directory."""

    PREFIX: ClassVar[str] = "logger"
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "wrc"
    wandb_mode: str = "offline"  # offline needs no account; online syncs


@dataclass
class RunSettings:
    """The whole ``train`` config: the top-level keys, the train/logger/optimizer sections and the constructor
    groups, which are passed on as they are (their constructors have their own defaults and checks)."""

    name: str | None = None  # names the run directory (Hydra: from the model and backbone)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun picks the local GPU with auto)
    precision: str = "fp32"  # upsampler autocast during training: fp32 | bf16 | fp16 (fp16 with loss scaling)
    run_dir: str | None = None
    resume: bool | str = False  # true: continue run_dir (it must hold a checkpoint); auto: if it does; or a run dir
    resume_allow_changes: bool = False  # resume even where the config differs from the run's config.json
    train: TrainLoop = field(default_factory=TrainLoop)
    logger: Logger = field(default_factory=Logger)
    evaluate: dict[str, Any] | None = None  # the report after training (evaluation/report.py reads and checks it)
    backbone: dict[str, Any] | None = None  # None only when train() is given the backbone module
    model: dict[str, Any] | None = None
    objective: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    optimizer: Any = None  # an Optimizer once read; Any for Hydra, where each optimizer/ option brings its schema

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> RunSettings:
        """The settings in a plain nested dict (as train_wrc.py passes it), defaults filled in, checked."""
        values = _values(cls, config, "")
        for section, kind in (("train", TrainLoop), ("logger", Logger), ("optimizer", Optimizer)):
            values[section] = kind.from_mapping(config.get(section))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        from wrc.backbone import PRECISIONS  # torch; imported here so this module stays cheap

        _require(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}", self.precision)
        for group in ("model", "objective", "data"):
            _require(getattr(self, group) is not None, group, "a mapping with a 'name' key (its config group)", None)
        batch_size = self.data.get("batch_size")
        _require(isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1,
                 "data.batch_size", "an integer >= 1 (images per process and step)", batch_size)
        workers = self.data.get("num_workers")
        _require(workers is None or (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0),
                 "data.num_workers", "an integer >= 0, or null for the cores available", workers)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain nested dict (a deep copy; the constructor groups' values as given): what
        train() runs, and what config.json and checkpoints record."""
        return dataclasses.asdict(self)


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with each missing top-level, train, logger and (AdamW) optimizer key set to its default,
    unchecked: to compare a run's saved config.json, written by any version, with a new one."""
    out = {**RunSettings().to_dict(), **config}
    for section, kind in (("train", TrainLoop), ("logger", Logger), ("optimizer", Optimizer)):
        given = config.get(section) or {}
        if section != "optimizer" or given.get("name", "adamw") == "adamw":
            out[section] = {**kind().to_dict(), **given}
    return json.loads(json.dumps(out, default=str))


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every setting that differs between a run's saved config and
    the config resuming it, except those in ``RESUME_MAY_CHANGE``; a key only one side has shows ``(absent)``."""
    before, after = _flatten(with_defaults(old)), _flatten(with_defaults(new))
    changes = {}
    for key in sorted(before.keys() | after.keys()):
        if any(key == k or key.startswith(f"{k}.") for k in RESUME_MAY_CHANGE):
            continue
        if before.get(key, _MISSING) != after.get(key, _MISSING):
            changes[key] = (before.get(key, _MISSING), after.get(key, _MISSING))
    return changes
