"""Data: image folders, built-in generated samples, the one image reader, crops, and the resumable sampler."""

from wrc.data.datasets import ImageFolder, SampleImages, build_dataset, find_images, stack_batch
from wrc.data.io import UnreadableImageError, decode_rgb, read_rgb
from wrc.data.sampler import ResumableSampler
from wrc.data.samples import generate_scene

__all__ = ["ImageFolder", "ResumableSampler", "SampleImages", "UnreadableImageError", "build_dataset", "decode_rgb",
           "find_images", "generate_scene", "read_rgb", "stack_batch"]
