"""Metric logging for a run: a JSONL file always, TensorBoard and wandb when asked; main process only.

``metrics.jsonl`` survives crashes: a torn last line (kill or power loss mid-write) is dropped with a warning by
every reader and before appending; a damaged line elsewhere is an error naming the file and line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from wrc.checkpoint import atomic_write_text

log = logging.getLogger("wrc")

METRICS_FILE = "metrics.jsonl"


class CorruptMetricsError(ValueError):
    """A line of metrics.jsonl other than the last is not a JSON record; the message names the file and line."""


def _records(path: Path) -> tuple[list[tuple[dict[str, Any], bytes]], bool]:
    """(record, raw line) pairs of a metrics file, and whether a torn last line was dropped.

    Only the last line can be torn (a write cut short by a kill or a power loss, possibly padded with NUL
    bytes): it is dropped with a warning. A bad line anywhere else means the file was damaged otherwise, so
    it is an error naming the file and line number rather than a silent gap in the history.
    """
    lines = [(number, line) for number, line in enumerate(path.read_bytes().split(b"\n"), start=1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if position == len(lines) - 1:
                log.warning("%s: dropped its torn last line %d (%d bytes; a write cut short by a kill or a power "
                            "loss)", path, number, len(line))
                return records, True
            raise CorruptMetricsError(
                f"{path}, line {number}: not a JSON record ({err}); only the last line can be torn by a crash, "
                "so the file was damaged otherwise: repair or delete that line"
            ) from None
        records.append((record, line))
    return records, False


def _rewrite(path: Path, lines: list[bytes]) -> None:
    atomic_write_text(path, "".join(line.decode("utf-8") + "\n" for line in lines))


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop records after ``last_step`` (written by a run that was killed after its last checkpoint) and a torn
    last line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    records, _ = _records(path)
    _rewrite(path, [line for record, line in records if record.get("step", 0) <= last_step])


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir/metrics.jsonl`` (a torn last line is left out, with a warning)."""
    path = Path(run_dir) / METRICS_FILE
    return [record for record, _ in _records(path)[0]] if path.is_file() else []


def repair_torn_tail(path: Path) -> None:
    """Before appending: a file not ending in a newline gets its torn last line dropped (or its newline back),
    so that the next record cannot be glued onto a partial one."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
    records, _ = _records(path)
    _rewrite(path, [line for _, line in records])


class RunLogger:
    """Args:
    run_dir: where metrics.jsonl, tensorboard/ and wandb/ go.
    tensorboard: also write TensorBoard event files.
    wandb: also log to Weights & Biases; ``wandb_mode="offline"`` needs no account.
    enabled: False on non-main ranks (then every call is a no-op).
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = False, wandb: bool = False, wandb_project: str = "wrc",
                 wandb_mode: str = "offline", config: dict | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = self._wandb = None
        self._file = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.run_dir / METRICS_FILE)
        self._file = open(self.run_dir / METRICS_FILE, "a")  # noqa: SIM115 (closed in close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("logger.tensorboard=true needs tensorboard: "
                                  "pip install 'wrc-upsampling[tensorboard]'") from err
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError as err:
                raise ImportError("logger.wandb=true needs wandb: pip install 'wrc-upsampling[wandb]'") from err
            self._wandb = wandb_lib.init(project=wandb_project, dir=str(self.run_dir), mode=wandb_mode, config=config,
                                         id=self._wandb_id(), resume="allow")

    def _wandb_id(self) -> str:
        """A run id kept in the run directory, so a resumed run continues the same wandb run."""
        path = self.run_dir / "wandb_id.txt"
        if not path.is_file():
            import uuid

            atomic_write_text(path, uuid.uuid4().hex[:12])
        return path.read_text().strip()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
