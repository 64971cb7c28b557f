"""wrc: dense features from frozen vision transformers with swappable, trainable upsamplers.

The public names are imported on first use (PEP 562), so ``import wrc.settings`` (what the Hydra entry
points need before composing) does not pay for importing timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DenseFeatureExtractor": "wrc.extractor",
    "build_extractor": "wrc.extractor",
    "FrozenBackbone": "wrc.backbone",
    "load_upsampler": "wrc.checkpoint",
    "push_to_hub": "wrc.hub",
    "Upsampler": "wrc.upsamplers",
    "create_upsampler": "wrc.upsamplers",
    "list_upsamplers": "wrc.upsamplers",
    "register_upsampler": "wrc.upsamplers",
    "TiledUpsampler": "wrc.tiling",
    "tiled_upsample": "wrc.tiling",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from wrc.backbone import FrozenBackbone as FrozenBackbone
    from wrc.checkpoint import load_upsampler as load_upsampler
    from wrc.extractor import DenseFeatureExtractor as DenseFeatureExtractor
    from wrc.extractor import build_extractor as build_extractor
    from wrc.hub import push_to_hub as push_to_hub
    from wrc.tiling import TiledUpsampler as TiledUpsampler
    from wrc.tiling import tiled_upsample as tiled_upsample
    from wrc.upsamplers import Upsampler as Upsampler
    from wrc.upsamplers import create_upsampler as create_upsampler
    from wrc.upsamplers import list_upsamplers as list_upsamplers
    from wrc.upsamplers import register_upsampler as register_upsampler


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wrc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
