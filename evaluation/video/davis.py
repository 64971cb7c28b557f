"""The DAVIS-2017 layout: sequences of a split, their frames and annotations, and indexed palette PNGs.

    <root>/ImageSets/2017/<split>.txt                         one sequence name per line (val: 30 sequences)
    <root>/JPEGImages/<resolution>/<sequence>/00000.jpg ...   the frames
    <root>/Annotations/<resolution>/<sequence>/00000.png ...  palette PNGs: 0 = background, 1..K = objects

Annotations and results are indexed PNGs whose pixel values are object ids (never colours); they are drawn with
the PASCAL VOC colour map, generated here by its bit-interleaving rule instead of shipped as a palette file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.datasets import missing

LAYOUT = ("<root>/ImageSets/2017/<split>.txt, <root>/JPEGImages/<resolution>/<sequence>/<frame>.jpg and "
          "<root>/Annotations/<resolution>/<sequence>/<frame>.png")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_MODES = ("P", "L")
VOID = 255  # "void" pixels of DAVIS annotations; the semi-supervised task treats them as background


def voc_palette(size: int = 256) -> list[int]:
    """The VOC colour map as a flat [r0, g0, b0, r1, ...] list: bits 0, 1, 2 of an index become the highest bit
    of R, G and B, bits 3, 4, 5 the next lower one, and so on (1 = (128, 0, 0), 2 = (0, 128, 0), 3 = (128, 128, 0))."""
    palette = []
    for index in range(size):
        rgb = [0, 0, 0]
        for level in range(8):  # three index bits per colour bit, from the top bit of each channel down
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * level + channel)) & 1) << (7 - level)
        palette.extend(rgb)
    return palette


PALETTE = voc_palette()


def read_label(path: str | os.PathLike) -> np.ndarray:
    """An annotation or result PNG as its (H, W) uint8 object ids: palette indices (mode P) or grey levels (L)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} not found")
    with Image.open(path) as image:
        if image.mode not in LABEL_MODES:
            raise ValueError(f"{path}: mode {image.mode!r}; expected an indexed (mode P) or grey (mode L) PNG whose "
                             "values are object ids (colour PNGs cannot be read as ids)")
        return np.array(image, dtype=np.uint8)


def write_label(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Save (H, W) object ids as an indexed PNG with the VOC palette (the format of DAVIS annotations)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"labels must be a (H, W) map of ids in 0..255; got shape {labels.shape}")
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(PALETTE)  # an L image with a palette becomes a P image with the same indices
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


class DavisDataset:
    """The sequences of one split and, for each, its sorted frames and annotations.

    Args:
        root: the DAVIS folder (holding ImageSets/, JPEGImages/, Annotations/).
        split: the name of a file in ImageSets/2017/ (``val``, ``train``, ...).
        resolution: the subfolder of JPEGImages/ and Annotations/ (``480p`` or ``Full-Resolution``).
        arguments: how the user passes root, split and resolution, for error messages (the protocol's settings by
            default; the scorer's command line passes ``--davis``, ``--split`` and ``--resolution``).
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", resolution: str = "480p",
                 arguments: dict[str, str] | None = None) -> None:
        self.root, self.split, self.resolution = Path(root), split, resolution
        self.arguments = arguments or {key: f"protocol.{key}" for key in ("root", "split", "resolution")}
        split_file = self.root / "ImageSets" / "2017" / f"{split}.txt"
        if not split_file.is_file():
            root_arg, split_arg = self.arguments["root"], self.arguments["split"]
            raise missing(split_arg, split_file, f"{LAYOUT} (pass {root_arg} <the DAVIS folder> and {split_arg} <a "
                          "file name there>)")
        self.sequences = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not self.sequences:
            raise ValueError(f"{split_file} lists no sequences; expected one sequence name per line")

    def frames(self, sequence: str) -> list[Path]:
        """The frame images of ``sequence``, sorted by name (00000.jpg, 00001.jpg, ...)."""
        return self._files("JPEGImages", sequence, FRAME_SUFFIXES, "frames")

    def annotations(self, sequence: str) -> list[Path]:
        """The annotation PNGs of ``sequence``, sorted by name (the val split annotates every frame)."""
        return self._files("Annotations", sequence, (".png",), "annotations")

    def first_annotation(self, sequence: str) -> Path:
        """The annotation of the first frame, which propagation starts from."""
        first = self.frames(sequence)[0]
        path = self.root / "Annotations" / self.resolution / sequence / f"{first.stem}.png"
        if not path.is_file():
            raise missing(self.arguments["root"], path, f"{LAYOUT}: sequence {sequence!r} has no annotation of its "
                          f"first frame {first.name}, which semi-supervised propagation starts from")
        return path

    def _files(self, kind: str, sequence: str, suffixes: tuple[str, ...], what: str) -> list[Path]:
        folder = self.root / kind / self.resolution / sequence
        if not folder.is_dir():
            raise missing(self.arguments["root"], folder, f"{LAYOUT} (sequence {sequence!r} of {self.split}.txt; "
                          f"{self.arguments['resolution']} {self.resolution!r} names the subfolder)")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
        if not files:
            raise missing(self.arguments["root"], folder / f"00000{suffixes[0]}",
                          f"{LAYOUT}: the folder of sequence {sequence!r} holds no {what}")
        return files
