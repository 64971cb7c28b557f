"""Upsamplers: one module per method, all registered by name on import."""

from wrc.upsamplers import (  # noqa: F401  (registration side effects)
    backbone_side,
    classic,
    converse2d,
    featup_implicit,
    featup_jbu,
    interpolate,
    lift,
    srt,
    wrc,
)
from wrc.upsamplers.base import (
    Upsampler,
    create_upsampler,
    get_upsampler_class,
    list_upsamplers,
    register_upsampler,
)

__all__ = ["Upsampler", "create_upsampler", "get_upsampler_class", "list_upsamplers", "register_upsampler"]
