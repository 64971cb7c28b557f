"""Upsamplers: one module per method, found by the registry (no import list to edit).

The registry imports every module of this package at the first lookup (``list_upsamplers``,
``create_upsampler``, ...); ``wrc.upsamplers.<module>`` read as an attribute imports that module.
"""

import importlib
import pkgutil
from types import ModuleType

from wrc.upsamplers.base import (
    UPSAMPLERS,
    Upsampler,
    create_upsampler,
    get_upsampler_class,
    list_upsamplers,
    register_upsampler,
)

__all__ = [
    "UPSAMPLERS", "Upsampler", "create_upsampler", "get_upsampler_class", "list_upsamplers", "register_upsampler",
]


def __getattr__(name: str) -> ModuleType:
    """Submodules load on first access, as they did when this file imported them all."""
    if not name.startswith("_") and name in {info.name for info in pkgutil.iter_modules(__path__)}:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
