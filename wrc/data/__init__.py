"""Data: image folders, built-in generated samples, crops, and the resumable sampler."""

from wrc.data.datasets import ImageFolder, SampleImages, build_dataset, find_images, stack_batch
from wrc.data.sampler import ResumableSampler
from wrc.data.samples import generate_scene

__all__ = ["ImageFolder", "ResumableSampler", "SampleImages", "build_dataset", "find_images", "generate_scene",
           "stack_batch"]
