"""Segmentation and depth datasets for the linear probes, read from their real directory layouts.

Every dataset yields {"image": (3, S, S) float in [0, 1], "label": (S, S) int64 with 255 = ignore
(segmentation) or "depth": (S, S) float metres with 0 = invalid, "name": str}. Images are resized so
the short side is ``size`` (bilinear, antialiased) and centre-cropped to S x S; labels and depth the
same way with nearest neighbour (the JAFAR/WRC protocol). ``size=None`` keeps the native resolution.

Label conventions (stated, since papers differ):
- VOC 2012: 21 classes (0 = background), 255 = boundary (ignored). Labels are palette indices.
- ADE20K: 150 classes with 0 ("other") ignored and k -> k - 1 (mmseg, DINOv2); ``reduce_zero_label=False``
  keeps 151 classes with 0 as a class (the JAFAR/WRC variant: numbers are not comparable).
- Cityscapes: the 19 train ids from gtFine labelIds, every other id ignored; ``crop="center"`` takes
  the paper's centre square instead of the full (resized) frame.
- COCO-Stuff-27: the curated image lists; fine ids 0..181 mapped to the 27 coarse classes, 255 ignored.
- NYUv2 depth: 16-bit PNGs in millimetres (``depth_scale=1000``) or another scale; 0 = invalid.

Images go through ``wrc.data.read_rgb`` (8-bit / 255, 16-bit / 65535, as in training); label and depth maps are
read as the integers stored in the file (palette indices, never colours) and must be single-channel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from wrc.data.io import read_rgb

IGNORE = 255

# labelId -> trainId for the 19 Cityscapes evaluation classes (road ... bicycle); every other id is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

# COCO-Stuff fine ids (0-based: 0..90 things, 91..181 stuff) of each of the 27 coarse classes (IIC/STEGO split).
COCO_COARSE = {
    "electronic": range(71, 77), "appliance": range(77, 83), "food-things": range(51, 61),
    "furniture-things": range(61, 71), "indoor": range(83, 91), "kitchen": range(43, 51),
    "accessory": range(25, 33), "animal": range(15, 25), "outdoor": range(9, 15), "person": [0],
    "sports": range(33, 43), "vehicle": range(1, 9), "ceiling": [101, 102],
    "floor": [100, 113, 114, 115, 116, 117], "food-stuff": [120, 121, 152, 169],
    "furniture-stuff": [97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164], "rawmaterial": [99, 131, 138, 142],
    "textile": [91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167], "wall": range(170, 177), "window": [179, 180],
    "building": [94, 95, 127, 150, 157, 165],
    "ground": [110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158],
    "plant": [93, 96, 118, 123, 128, 133, 141, 162, 168], "sky": [105, 156],
    "solid": [126, 134, 149, 159, 161, 181], "structural": [98, 112, 137, 145, 163],
    "water": [119, 147, 154, 177, 178],
}


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A uint8 -> int64 table sending every key to its value and everything else to IGNORE."""
    table = np.full(size, IGNORE, dtype=np.int64)
    for key, value in mapping.items():
        table[key] = value
    return table


COCO_FINE_TO_COARSE = lookup_table({fine: coarse for coarse, fines in enumerate(COCO_COARSE.values())
                                    for fine in fines})
CITYSCAPES_TABLE = lookup_table(CITYSCAPES_TRAIN_IDS)


def missing(argument: str, path: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{argument}: {path} not found; expected the layout {layout}")


def resize_crop(t: torch.Tensor, size: int | None, mode: str, centre_square: bool = True) -> torch.Tensor:
    """Short side to ``size`` then a centre crop to size x size; t is (C, H, W)."""
    if size is None:
        return t
    height, width = t.shape[-2:]
    scale = size / min(height, width)
    new = (max(size, round(height * scale)), max(size, round(width * scale)))
    kwargs = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    t = F.interpolate(t[None].float(), size=new, mode=mode, **kwargs)[0]
    if not centre_square:
        return t
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return t[..., top : top + size, left : left + size]


class PairedDataset(Dataset):
    """(image file, target file) pairs with a function that decodes the target into labels or depth."""

    def __init__(self, pairs: list[tuple[Path, Path]], decode: Callable[[Path], np.ndarray], size: int | None,
                 kind: str, num_classes: int | None = None, name: str = "", square: bool = True) -> None:
        if not pairs:
            raise ValueError(f"dataset {name!r} has no images")
        self.pairs, self.decode, self.size, self.kind, self.square = pairs, decode, size, kind, square
        self.num_classes, self.name = num_classes, name

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, target_path = self.pairs[index]
        image = read_rgb(image_path)
        target = torch.from_numpy(self.decode(target_path))[None]
        image = resize_crop(image, self.size, "bilinear", self.square).clamp(0, 1)
        target = resize_crop(target.float(), self.size, "nearest", self.square)[0]
        key = "label" if self.kind == "segmentation" else "depth"
        value = target.long() if self.kind == "segmentation" else target
        return {"image": image, key: value, "name": image_path.stem}


def read_single_channel(path: Path, dtype: type, what: str) -> np.ndarray:
    """The stored values of a one-channel image (palette indices for "P", 16-bit values for "I;16", ...)."""
    with Image.open(path) as image:
        values = np.asarray(image).astype(dtype)
        if values.ndim != 2:
            raise ValueError(
                f"{path}: a {what} must be a single-channel image (modes L, P, I;16, I, F); got mode {image.mode!r}"
            )
    return values


def read_indices(path: Path) -> np.ndarray:
    """The pixel values of a label PNG (palette indices for "P" images, never converted to RGB)."""
    return read_single_channel(path, np.int64, "label map")


def voc2012(root: str | Path, split: str, size: int | None = 448) -> PairedDataset:
    """root holds VOCdevkit/VOC2012 (or is VOC2012 itself); split: train | val | trainval."""
    base = Path(root) / "VOCdevkit" / "VOC2012"
    base = base if base.is_dir() else Path(root)
    listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise missing("dataset.root", listing, "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,"
                      "ImageSets/Segmentation/<split>.txt}")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    pairs = [(base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png") for i in ids]
    return PairedDataset(pairs, read_indices, size, "segmentation", 21, "voc2012")


def ade20k(root: str | Path, split: str, size: int | None = 448, reduce_zero_label: bool = True) -> PairedDataset:
    """root holds ADEChallengeData2016 (or is it); split: training | validation (train | val accepted)."""
    folder = {"train": "training", "val": "validation"}.get(split, split)
    base = Path(root) / "ADEChallengeData2016"
    base = base if base.is_dir() else Path(root)
    images, labels = base / "images" / folder, base / "annotations" / folder
    for path in (images, labels):
        if not path.is_dir():
            raise missing("dataset.root", path, "ADEChallengeData2016/{images,annotations}/{training,validation}")
    pairs = [(image, labels / f"{image.stem}.png") for image in sorted(images.glob("*.jpg"))]
    for _, label in pairs[:1]:
        if not label.is_file():
            raise missing("dataset.root", label, "one annotation PNG per image, same stem")

    def decode(path: Path) -> np.ndarray:
        label = read_indices(path)
        if not reduce_zero_label:
            return label
        return np.where(label == 0, IGNORE, label - 1)

    return PairedDataset(pairs, decode, size, "segmentation", 150 if reduce_zero_label else 151, "ade20k")


def cityscapes(root: str | Path, split: str, size: int | None = 448, crop: str = "full") -> PairedDataset:
    """root holds leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/ (labelIds PNGs).

    crop: "full" resizes the whole 2:1 frame so its short side is ``size`` and keeps it all (not square);
    "center" takes the centre size x size square after that resize.
    """
    if crop not in ("full", "center"):
        raise ValueError(f"cityscapes crop={crop!r}; expected 'full' or 'center'")
    images, labels = Path(root) / "leftImg8bit" / split, Path(root) / "gtFine" / split
    for path in (images, labels):
        if not path.is_dir():
            raise missing("dataset.root", path, "{leftImg8bit,gtFine}/<split>/<city>/")
    pairs = []
    for image in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        pairs.append((image, labels / image.parent.name / f"{stem}_gtFine_labelIds.png"))

    def decode(path: Path) -> np.ndarray:
        label = read_indices(path)
        if label.max() > 33 or label.min() < 0:
            raise ValueError(f"{path}: labelIds must be 0..33; got values up to {label.max()}")
        return CITYSCAPES_TABLE[label]

    return PairedDataset(pairs, decode, size, "segmentation", 19, "cityscapes", square=crop == "center")


def coco_stuff27(root: str | Path, split: str, size: int | None = 448) -> PairedDataset:
    """root holds cocostuff/{images,annotations,curated}/<split>2017 (FeatUp/STEGO layout) or
    {dataset/images,dataset/annotations,curated}/<split>2017 (JAFAR/WRC); split: train | val."""
    root = Path(root)
    layouts = [(root / "cocostuff" / "images", root / "cocostuff" / "annotations", root / "cocostuff" / "curated"),
               (root / "dataset" / "images", root / "dataset" / "annotations", root / "curated")]
    folder = f"{split}2017"
    for images, labels, curated in layouts:
        listing = curated / folder / "Coco164kFull_Stuff_Coarse.txt"
        if listing.is_file():
            ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
            pairs = [(images / folder / f"{i}.jpg", labels / folder / f"{i}.png") for i in ids]
            return PairedDataset(pairs, lambda path: COCO_FINE_TO_COARSE[read_indices(path)], size,
                                 "segmentation", 27, "coco_stuff27")
    raise missing("dataset.root", layouts[0][2] / folder / "Coco164kFull_Stuff_Coarse.txt",
                  "cocostuff/{images,annotations}/<split>2017 and cocostuff/curated/<split>2017/"
                  "Coco164kFull_Stuff_Coarse.txt")


def nyuv2(root: str | Path, split: str, size: int | None = 448, depth_scale: float = 1000.0) -> PairedDataset:
    """NYUv2 exported as <split>/{images,depths}/*.png (16-bit depth, value / depth_scale = metres; 0 invalid)."""
    images, depths = Path(root) / split / "images", Path(root) / split / "depths"
    for path in (images, depths):
        if not path.is_dir():
            raise missing("dataset.root", path, "<split>/images/*.png and <split>/depths/*.png (16-bit)")
    pairs = [(image, depths / image.name) for image in sorted(images.glob("*.png"))]

    def decode(path: Path) -> np.ndarray:
        return read_single_channel(path, np.float32, "depth map") / depth_scale

    return PairedDataset(pairs, decode, size, "depth", None, "nyuv2")


DATASETS = {"voc2012": voc2012, "ade20k": ade20k, "cityscapes": cityscapes, "coco_stuff27": coco_stuff27,
            "nyuv2": nyuv2}
