"""Metric logging for a run: a JSONL file always, TensorBoard and wandb when asked; main process only."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from wrc.checkpoint import atomic_write_text

log = logging.getLogger("wrc")

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop records after ``last_step`` (written by a run that was killed after its last checkpoint)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


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
        self._file = open(self.run_dir / METRICS_FILE, "a")  # noqa: SIM115 (closed in close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("logger.tensorboard=true needs tensorboard: pip install 'wrc[tensorboard]'") from err
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError as err:
                raise ImportError("logger.wandb=true needs wandb: pip install 'wrc[wandb]'") from err
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
