"""Training images: any folder of images (searched recursively), or the built-in generated samples.

Items are requested as ``(index, sample_seed)`` pairs (see ``wrc.data.sampler``) so that crops and
flips are a function of the seed alone. Each item is ``{"image": (3, S, S) in [0, 1],
"num_skipped": n}``, plus ``"masks"`` ((M, S, S) bool through the same crop) with ``data.masks_root``
(wrc.data.masks); ``n`` counts the files skipped to produce it: the training loop sums these,
so bad files are reported with a count instead of crashing a long run. Skipped (with a warning naming the
file): unreadable or truncated files, unsupported pixel modes and decompression bombs (``wrc.data.io``), missing
or unusable mask files,
and images whose short side is below ``min_size`` pixels (default 16, the largest patch of the configured
backbones; ``data.min_size``): such an image would otherwise be upscaled into a crop of blurred pixels.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from wrc.data.io import decode_rgb
from wrc.data.masks import MAX_MASKS, mask_file, read_masks
from wrc.data.samples import TRAIN_SEED_OFFSET, VAL_SEED_OFFSET, generate_scene
from wrc.data.transforms import Pixels, crop_geometry, crop_image, crop_mask, image_size_of, resized_crop, to_tensor

log = logging.getLogger("wrc")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MAX_CONSECUTIVE_FAILURES = 50
MIN_IMAGE_SIZE = 16  # pixels: one patch of the largest-patch backbones configured (ViT-*/16)


def find_images(root: str | os.PathLike, argument: str = "data.root") -> list[Path]:
    """All image files below ``root``, sorted; clear errors for a missing or empty folder."""
    if root is None or str(root) == "":
        raise ValueError(
            f"{argument} is not set: pass {argument}=/path/to/images (a folder of jpg/png/webp files, searched "
            "recursively), or data=samples for the built-in sample images"
        )
    path = Path(os.path.expanduser(str(root)))
    if not path.is_dir():
        raise FileNotFoundError(f"{argument}={str(root)!r} does not exist or is not a directory")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"{argument}={str(root)!r} contains no images with extensions {IMAGE_EXTENSIONS}")
    return files


class ImageTooSmallError(ValueError):
    """A training image smaller than ``min_size`` pixels; the message names the file and its size."""


class ImageFolder(Dataset):
    """Every jpg/png/webp below ``root``; random (train) or centre (eval) square crops of ``image_size``.

    Images whose short side is below ``min_size`` pixels are skipped and counted (see the module docstring),
    not upscaled: a skip keeps a long run alive where an error would end it.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, *, train: bool = True, min_scale: float = 0.5,
                 argument: str = "data.root", min_size: int = MIN_IMAGE_SIZE, masks_root: str | None = None,
                 max_masks: int = MAX_MASKS) -> None:
        if image_size < 1:
            raise ValueError(f"data.image_size must be a positive number of pixels; got {image_size}")
        if min_size < 1:
            raise ValueError(f"data.min_size must be a positive number of pixels; got {min_size}")
        if max_masks < 1:
            raise ValueError(f"data.max_masks must be >= 1; got {max_masks}")
        self.files = find_images(root, argument)
        self.root, self.masks_root, self.max_masks = root, masks_root, max_masks
        self.image_size, self.train, self.min_scale, self.min_size = image_size, train, min_scale, min_size
        if masks_root is not None:
            expected = mask_file(self.files[0], root, masks_root)
            if not expected.is_file():
                raise FileNotFoundError(
                    f"data.masks_root={str(masks_root)!r} has no masks for the first image {self.files[0]} (expected "
                    f"{expected}): masks_root mirrors data.root with one SA-1B JSON per image (SA-1B's own folders: "
                    "masks_root = root)")

    @property
    def delivers_masks(self) -> bool:
        """Whether items carry ``"masks"`` (the training loop passes them to the objective)."""
        return self.masks_root is not None

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> Pixels:
        pixels = decode_rgb(self.files[index])
        height, width = pixels.shape[:2]
        if min(height, width) < self.min_size:
            raise ImageTooSmallError(
                f"{self.files[index]} is {width}x{height} pixels, smaller than data.min_size={self.min_size} "
                "(one patch)"
            )
        return pixels

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, item)
        for skipped in range(MAX_CONSECUTIVE_FAILURES):
            candidate = (index + skipped) % len(self)
            try:
                image = self._load(candidate)
                width, height = image_size_of(image)
                masks = self._masks(candidate, height, width)
            # OSError: unreadable or truncated (UnidentifiedImageError too), a missing mask file; ValueError:
            # UnreadableImageError, ImageTooSmallError, MaskFileError; SyntaxError: Pillow on some malformed chunks
            except (OSError, ValueError, SyntaxError) as err:
                log.warning("skipping image %s (%s)", self.files[candidate], err)
                continue
            rng = random.Random(seed) if self.train else None
            box, flip = crop_geometry(width, height, rng, self.min_scale)
            item = {"image": to_tensor(crop_image(image, self.image_size, box, flip)), "num_skipped": skipped}
            if masks is not None:
                item["masks"] = torch.stack([crop_mask(m, self.image_size, box, flip) for m in masks]) if masks else \
                    torch.zeros(0, self.image_size, self.image_size, dtype=torch.bool)
            return item
        raise RuntimeError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable or too small images from "
                           f"{self.files[index]}: is data.root a folder of images?")


    def _masks(self, index: int, height: int, width: int) -> list | None:
        if self.masks_root is None:
            return None
        return read_masks(mask_file(self.files[index], self.root, self.masks_root), height, width, self.max_masks)


class SampleImages(Dataset):
    """``num_images`` generated scenes; the validation split uses disjoint seeds (held out by construction)."""

    def __init__(self, num_images: int, image_size: int, *, train: bool = True, min_scale: float = 0.5,
                 source_size: int | None = None) -> None:
        if num_images < 1:
            raise ValueError(f"data.num_images must be >= 1; got {num_images}")
        self.num_images, self.image_size, self.train, self.min_scale = num_images, image_size, train, min_scale
        self.source_size = source_size or 2 * image_size
        self.offset = TRAIN_SEED_OFFSET if train else VAL_SEED_OFFSET
        self._cache: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, item)
        if index not in self._cache:
            self._cache[index] = generate_scene(self.offset + index, self.source_size)
        rng = random.Random(seed) if self.train else None
        image = resized_crop(self._cache[index], self.image_size, rng, self.min_scale)
        return {"image": to_tensor(image), "num_skipped": 0}


def build_dataset(cfg: dict, *, train: bool = True) -> Dataset:
    """Dataset from the ``data`` config group (``name: image_folder | samples``)."""
    name = cfg.get("name")
    common = {"train": train, "min_scale": cfg.get("min_scale", 0.5)}
    if name == "image_folder":
        return ImageFolder(cfg.get("root"), cfg["image_size"], min_size=cfg.get("min_size", MIN_IMAGE_SIZE),
                           masks_root=cfg.get("masks_root"), max_masks=cfg.get("max_masks", MAX_MASKS), **common)
    if name == "samples":
        return SampleImages(cfg.get("num_images", 64), cfg["image_size"], **common)
    raise ValueError(f"unknown data.name={name!r}; expected 'image_folder' or 'samples'")


def stack_batch(items: list[dict]) -> dict:
    """Collate: images stacked, skip counts summed; masks (when items carry them) padded with empty masks to the
    batch's largest count, (B, M, S, S) bool."""
    batch = {"image": torch.stack([it["image"] for it in items]), "num_skipped": sum(it["num_skipped"] for it in items)}
    if "masks" in items[0]:
        count = max(it["masks"].shape[0] for it in items)
        masks = torch.zeros(len(items), count, *items[0]["masks"].shape[-2:], dtype=torch.bool)
        for row, item in zip(masks, items, strict=True):
            row[: item["masks"].shape[0]] = item["masks"]
        batch["masks"] = masks
    return batch
