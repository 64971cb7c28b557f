"""Upsamplers: one module per method, all registered by name on import."""

from wrc.upsamplers import converse2d, interpolate, lift, wrc  # noqa: F401  (registration side effects)
from wrc.upsamplers.base import (
    Upsampler,
    create_upsampler,
    get_upsampler_class,
    list_upsamplers,
    register_upsampler,
)

__all__ = ["Upsampler", "create_upsampler", "get_upsampler_class", "list_upsamplers", "register_upsampler"]
