"""Training objectives: one module per objective, found by the registry (no import list to edit).

The registry imports every module of this package at the first lookup (``list_objectives``,
``create_objective``, ...); ``wrc.objectives.<module>`` read as an attribute imports that module.
"""

import importlib
import pkgutil
from types import ModuleType

from wrc.objectives.base import (
    OBJECTIVES,
    Objective,
    create_objective,
    get_objective_class,
    list_objectives,
    register_objective,
)

__all__ = [
    "OBJECTIVES", "Objective", "create_objective", "get_objective_class", "list_objectives", "register_objective",
]


def __getattr__(name: str) -> ModuleType:
    """Submodules load on first access, as they did when this file imported them all."""
    if not name.startswith("_") and name in {info.name for info in pkgutil.iter_modules(__path__)}:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
