"""Upsamplers: one module per method, found by the registry (no import list to edit).

The registry imports every module of this package at the first lookup (``list_upsamplers``,
``create_upsampler``, ...); ``wrc.upsamplers.<module>`` read as an attribute imports that module.
"""

from wrc.registry import submodule_getattr
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


__getattr__ = submodule_getattr(__name__, __path__)
