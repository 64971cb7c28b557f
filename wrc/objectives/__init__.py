"""Training objectives: one module per objective, all registered by name on import."""

from wrc.objectives import featup_multiview, lift_multiscale, srt_distill, wrc_multicrop  # noqa: F401  (registration side effects)
from wrc.objectives.base import Objective, create_objective, list_objectives, register_objective

__all__ = ["Objective", "create_objective", "list_objectives", "register_objective"]
