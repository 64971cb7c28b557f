"""SPair-71k keypoint pairs from the official layout, sampled and pad-resized as the LiFT protocol does.

Layout (``root`` is the SPair-71k folder)::

    JPEGImages/<category>/<image>.jpg
    ImageAnnotation/<category>/<image>.json        "kps": {"0": [x, y] or null, ...} (its length: the slots)
    PairAnnotation/<split>/<id>-<src>-<trg>:<category>.json     split: trn | val | test

Pair files are found under both names in use: the official ``...:<category>.json`` (WRC's glob) and
``..._<category>.json`` (LiFT's glob, which matches only where extraction replaced ':' by '_'); a file is
assigned to the longest category its name ends with. A pair stored under both names (the same
``<id>-<src>-<trg>`` stem) is one pair: the ':' file is kept, the other left out (and logged). A pair file
holds ``src_imname``, ``trg_imname``, ``src_imsize`` / ``trg_imsize`` ([W, H, 3]), ``trg_bndbox`` ([x1, y1,
x2, y2]), ``src_kps`` / ``trg_kps`` ([[x, y], ...]), ``kps_ids`` (the slots those keypoints fill),
``category`` and ``mirror``.

Sampling (``sample_pairs``) draws ``per_category`` pair files *with replacement* from each category's
sorted list, from one random stream seeded once before the loop over *all* categories (sorted): the stream
of LiFT's ``np.random.seed(0)`` then ``np.random.choice(n, 100)`` per category. A run of some categories
draws for every category and keeps its own, so each category's sample is the one a full run scores (the
draws of one category depend on the pair counts of those before it). LiFT looped over ``os.listdir``
(unsorted, filesystem-dependent) categories and glob order, so its exact sample cannot be reproduced;
this one is deterministic for a seed.

Pad-resize (``PadResize``): the long side to ``size`` (LANCZOS), the short side to round(size * short /
long), centred on a black size x size square; keypoints are multiplied by size / long and shifted by
the padding of the short axis.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluation.datasets import missing
from wrc.data.io import read_rgb

log = logging.getLogger("wrc")

LAYOUT = ("SPair-71k/{JPEGImages/<category>/<image>.jpg, ImageAnnotation/<category>/<image>.json, "
          "PairAnnotation/{trn,val,test}/<id>-<src>-<trg>:<category>.json}")
SPLITS = ("trn", "val", "test")
SEPARATORS = (":", "_")  # official file names, LiFT's renamed ones
PAIR_KEYS = ("src_imname", "trg_imname", "src_imsize", "trg_imsize", "trg_bndbox", "src_kps", "trg_kps", "kps_ids",
             "category")


@dataclass(frozen=True)
class PadResize:
    """Resize so the long side is ``size`` and centre on a black ``size`` x ``size`` square (image and points)."""

    scale: float  # size / long side, applied to keypoints and boxes
    width: int  # of the resized image, before padding
    height: int
    left: int  # padding before the resized image
    top: int
    size: int

    @classmethod
    def of(cls, width: int, height: int, size: int) -> PadResize:
        long, short = max(width, height), min(width, height)
        resized_short = round(size * short / long)
        new_width, new_height = (size, resized_short) if width >= height else (resized_short, size)
        return cls(size / long, new_width, new_height, (size - new_width) // 2, (size - new_height) // 2, size)

    def points(self, points: torch.Tensor) -> torch.Tensor:
        """(K, 3) slots [x, y, visible] -> the same in the padded frame; invisible slots are zeroed."""
        out = points.clone()
        out[:, 0] = points[:, 0] * self.scale + self.left
        out[:, 1] = points[:, 1] * self.scale + self.top
        return out * (points[:, 2:] > 0)

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) float RGB in [0, 1] -> (3, size, size): LANCZOS on 8-bit pixels as LiFT does, black padding."""
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        resized = Image.fromarray(pixels).resize((self.width, self.height), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (self.size, self.size))
        canvas.paste(resized, (self.left, self.top))
        return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


@dataclass(frozen=True)
class KeypointPair:
    """One pair file: both images, their sizes (W, H), keypoints scattered to slots, the target box."""

    path: Path
    category: str
    source: Path
    target: Path
    source_size: tuple[int, int]
    target_size: tuple[int, int]
    source_points: torch.Tensor  # (K, 3): x, y, visible (1) or not (0, 0, 0)
    target_points: torch.Tensor
    target_box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the original target image


def check_layout(root: str | Path | None, split: str) -> Path:
    """The SPair-71k root, after checking the folders the protocol reads exist."""
    if root is None:
        raise ValueError(f"protocol.root is not set: pass protocol.root=/path/to/SPair-71k (the layout {LAYOUT})")
    if split not in SPLITS:
        raise ValueError(f"protocol.split={split!r}; expected one of {SPLITS} (LiFT and WRC evaluate 'test')")
    root = Path(root)
    for path in (root, root / "ImageAnnotation", root / "PairAnnotation" / split, root / "JPEGImages"):
        if not path.is_dir():
            raise missing("protocol.root", path, LAYOUT)
    return root


def list_categories(root: Path, requested: Sequence[str] | None = None) -> list[str]:
    """The categories (sorted folder names of ImageAnnotation/), or the requested ones after checking each exists."""
    available = sorted(p.name for p in (root / "ImageAnnotation").iterdir() if p.is_dir())
    if not available:
        raise missing("protocol.root", root / "ImageAnnotation" / "<category>", LAYOUT)
    if requested is None:
        return available
    unknown = [c for c in requested if c not in available]
    if unknown or not requested:
        raise ValueError(f"protocol.categories={list(requested)}: {unknown or 'empty'}; the categories of {root} are "
                         f"{available} (or null for all)")
    return sorted(set(requested))


def category_of_file(name: str, categories: Iterable[str]) -> str | None:
    """The category a pair file's name ends with (``:cat.json`` or ``_cat.json``; the longest when several do)."""
    matches = [c for c in categories for sep in SEPARATORS if name.endswith(f"{sep}{c}.json")]
    return max(matches, key=len) if matches else None


def pair_files(root: Path, split: str, categories: Sequence[str], known: Sequence[str],
               requested: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Each category's pair files in ``PairAnnotation/<split>``, sorted by name; ``known`` are all categories (so that
    ``x_cat.json`` is never taken for a file of ``cat``). A pair under both names (one stem ``<id>-<src>-<trg>``,
    then ':' or '_') is listed once, as its ':' file. Every one of ``categories`` must have pair files; those not in
    ``requested`` (default: all of them) are needed only for the sampling stream, which the error then says."""
    folder = root / "PairAnnotation" / split
    found: dict[str, dict[str, list[Path]]] = {c: {} for c in categories}  # category -> stem -> its files
    for path in sorted(Path(p) for p in glob.glob(str(folder / "*.json"))):
        category = category_of_file(path.name, known)
        if category in found:
            found[category].setdefault(path.name[: -len(f":{category}.json")], []).append(path)
    kept: dict[str, list[Path]] = {}
    duplicates = []
    for category, stems in found.items():
        kept[category] = []
        for paths in stems.values():
            official = [p for p in paths if p.name[-len(f":{category}.json")] == ":"]
            kept[category].append((official or paths)[0])
            duplicates += [p.name for p in paths if p != kept[category][-1]]
        kept[category].sort(key=lambda p: p.name)
    if duplicates:
        log.warning("%d pair files in %s are second copies of a pair stored under both names (':' and '_'): each "
                    "pair counted once, its ':' file kept; left out %s%s", len(duplicates), folder, duplicates[:3],
                    " ..." if len(duplicates) > 3 else "")
    requested = list(categories) if requested is None else list(requested)
    for category, paths in kept.items():
        if not paths:
            hint = ("pass protocol.categories=[...] to evaluate only some categories" if category in requested else
                    f"{category!r} is not evaluated, but pairs are drawn from one random stream over all categories, "
                    f"so the sample of {requested} depends on every category's pair count: restore its pair files, or "
                    f"pass protocol.pairs_per_category=null to score every pair of the requested categories")
            raise ValueError(
                f"protocol.root: no pair files of category {category!r} in {folder}: expected "
                f"'<id>-<src>-<trg>:{category}.json' (the official SPair-71k names) or "
                f"'<id>-<src>-<trg>_{category}.json' (LiFT's renamed files); {hint}")
    return kept


def sample_pairs(files: dict[str, list[Path]], per_category: int | None, seed: int,
                 categories: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """``per_category`` files drawn with replacement per category, from one stream seeded once and drawn for every
    category of ``files`` in sorted order (all of them: each category's draws follow those of the categories before
    it); kept for ``categories`` (default: all). None keeps every file once (the whole split)."""
    keep = sorted(files) if categories is None else sorted(categories)
    absent = [c for c in keep if c not in files]
    if absent:
        raise ValueError(f"no pair files listed for {absent}; sample_pairs needs every category's files")
    if per_category is None:
        return {category: list(files[category]) for category in keep}
    stream = np.random.RandomState(seed)
    drawn = {category: stream.choice(len(files[category]), per_category) for category in sorted(files)}
    return {category: [files[category][i] for i in drawn[category]] for category in keep}


def keypoint_slots(root: Path, category: str) -> int:
    """K: the number of keypoint slots of a category, the length of ``kps`` in any of its image annotations."""
    folder = root / "ImageAnnotation" / category
    annotations = sorted(folder.glob("*.json"))
    if not annotations:
        raise missing("protocol.root", folder / "<image>.json", LAYOUT)
    data = read_json(annotations[0])
    if not isinstance(data.get("kps"), dict):
        raise ValueError(f"{annotations[0]}: expected 'kps': {{\"0\": [x, y] or null, ...}} (one entry per slot)")
    return len(data["kps"])


def scatter_to_slots(points: Sequence, ids: Sequence, slots: int, path: Path) -> torch.Tensor:
    """Keypoints [[x, y], ...] of slots ``ids`` -> (slots, 3) [x, y, 1]; slots without one (or null) stay (0, 0, 0)."""
    if len(points) != len(ids):
        raise ValueError(f"{path}: {len(points)} keypoints but {len(ids)} kps_ids; they must pair up")
    out = torch.zeros(slots, 3, dtype=torch.float64)
    for slot, point in zip(ids, points, strict=True):
        index = int(slot)
        if not 0 <= index < slots:
            raise ValueError(f"{path}: kps_id {slot!r} is outside the category's {slots} keypoint slots")
        if point is not None:
            out[index] = torch.tensor([float(point[0]), float(point[1]), 1.0], dtype=torch.float64)
    return out


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def read_pair(path: Path, root: Path, category: str, slots: int) -> KeypointPair:
    """A pair file, checked: its category is its file's, it is unmirrored, and both images exist."""
    data = read_json(path)
    absent = [key for key in PAIR_KEYS if key not in data]
    if absent:
        raise ValueError(f"{path}: no {absent}; a SPair-71k pair file has {list(PAIR_KEYS)}")
    if data["category"] != category:
        raise ValueError(f"{path}: its 'category' is {data['category']!r} but its file name says {category!r}; "
                         f"the file is misnamed or in the wrong split folder")
    if data.get("mirror", 0) != 0:
        raise ValueError(f"{path}: mirror={data['mirror']}; the LiFT protocol evaluates unmirrored pairs only "
                         f"(mirror 0): remove the file or use the official pair annotations")
    images = []
    for key in ("src_imname", "trg_imname"):
        image = root / "JPEGImages" / category / data[key]
        if not image.is_file():
            raise missing(f"{path.name} ({key})", image, LAYOUT)
        images.append(image)
    ids = data["kps_ids"]
    return KeypointPair(
        path=path, category=category, source=images[0], target=images[1],
        source_size=(int(data["src_imsize"][0]), int(data["src_imsize"][1])),
        target_size=(int(data["trg_imsize"][0]), int(data["trg_imsize"][1])),
        source_points=scatter_to_slots(data["src_kps"], ids, slots, path),
        target_points=scatter_to_slots(data["trg_kps"], ids, slots, path),
        target_box=tuple(float(v) for v in data["trg_bndbox"]),
    )


def load_padded(path: Path, size: int, expected: tuple[int, int], pair: Path) -> torch.Tensor:
    """An image pad-resized to ``size`` (3, size, size), after checking it has the size (W, H) its pair file says."""
    image = read_rgb(path)
    actual = (image.shape[-1], image.shape[-2])
    if actual != tuple(expected):
        raise ValueError(f"{pair}: says {path.name} is {expected[0]}x{expected[1]} (W x H) but the image is "
                         f"{actual[0]}x{actual[1]}; its keypoints would be misplaced")
    return PadResize.of(*actual, size).image(image)
