"""The one way a linear head is trained on frozen features: the probes and the synthetic benchmark share it.

AdamW on the head's parameters with a learning rate that is constant or follows a half cosine over the
planned steps (stepped per optimisation step, as JAFAR/WRC's probes do); its state is one dict, so a
probe killed between epochs resumes exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

SCHEDULES = ("cosine", "constant")


class HeadTrainer:
    """Optimiser and schedule of a head; ``step(loss)`` is one update."""

    def __init__(self, head: nn.Module, *, lr: float, weight_decay: float, total_steps: int,
                 schedule: str = "cosine") -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}")
        if not lr > 0 or total_steps < 1:
            raise ValueError(f"lr must be > 0 and total_steps >= 1; got lr={lr}, total_steps={total_steps}")
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        def factor(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * step / total_steps)) if schedule == "cosine" else 1.0

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def fit_full_batch(head: nn.Module, features: torch.Tensor, targets: torch.Tensor, loss_fn, *, steps: int,
                   lr: float, weight_decay: float = 0.0) -> nn.Module:
    """Fit ``head`` on one batch held in memory for ``steps`` constant-lr steps; returns it frozen, in eval mode."""
    trainer = HeadTrainer(head, lr=lr, weight_decay=weight_decay, total_steps=steps, schedule="constant")
    with torch.enable_grad():
        for _ in range(steps):
            trainer.step(loss_fn(head(features), targets))
    return head.requires_grad_(False).eval()
