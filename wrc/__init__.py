"""wrc: dense features from frozen vision transformers with swappable, trainable upsamplers."""

from wrc.backbone import FrozenBackbone
from wrc.checkpoint import load_upsampler
from wrc.extractor import DenseFeatureExtractor
from wrc.upsamplers import Upsampler, create_upsampler, list_upsamplers, register_upsampler

__version__ = "0.1.0"

__all__ = [
    "DenseFeatureExtractor",
    "FrozenBackbone",
    "Upsampler",
    "create_upsampler",
    "list_upsamplers",
    "load_upsampler",
    "register_upsampler",
    "__version__",
]
