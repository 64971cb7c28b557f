"""Two-process torchrun (gloo, CPU) for the DDP tests: run a training helper on two ranks, then compare what each
rank saved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def run_two_ranks(script: Path, config: Path | str, states: Path, timeout: int) -> None:
    """``torchrun --nproc_per_node=2 script config --save-state states``; fails the test with its stderr."""
    states.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(config), "--save-state", str(states)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def assert_ranks_hold_the_same_parameters(states: Path) -> None:
    """DDP keeps every parameter identical across ranks. BatchNorm running statistics are broadcast from rank 0 at
    each forward, so after the last step each rank holds its own update: they are left out."""
    rank0, rank1 = (torch.load(states / f"rank{r}.pt") for r in range(2))
    parameters = [k for k in rank0 if not k.endswith(BUFFERS)]
    assert len(parameters) > 10
    for key in parameters:
        torch.testing.assert_close(rank0[key], rank1[key], msg=key)
