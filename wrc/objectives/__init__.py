"""Training objectives: one module per objective, found by the registry (no import list to edit).

The registry imports every module of this package at the first lookup (``list_objectives``,
``create_objective``, ...); ``wrc.objectives.<module>`` read as an attribute imports that module.
"""

from wrc.objectives.base import (
    OBJECTIVES,
    Objective,
    create_objective,
    get_objective_class,
    list_objectives,
    register_objective,
)
from wrc.registry import submodule_getattr

__all__ = [
    "OBJECTIVES", "Objective", "create_objective", "get_objective_class", "list_objectives", "register_objective",
]


__getattr__ = submodule_getattr(__name__, __path__)
