"""The TokenCut datasets from their real layouts: boxes (VOC07, VOC12, COCO20k) and salient masks (ECSSD,
DUTS-TE, DUT-OMRON). Readers return file paths and annotations; the protocols read and resize the images.

Boxes are [x1, y1, x2, y2] in pixels of the original image with x2, y2 exclusive:
- VOC (``voc(root, year, split)``): ``root`` holds VOC2007/VOCdevkit/VOC2007 (TokenCut's datasets/ folder and
  torchvision's VOCDetection root), or is VOCdevkit's parent, or VOC2007 itself: JPEGImages/<id>.jpg,
  Annotations/<id>.xml, ImageSets/Main/<split>.txt. The XMLs are parsed here (object/name, truncated,
  difficult, bndbox). VOC boxes are 1-based and inclusive: xmin and ymin lose 1, xmax and ymax stay (TokenCut).
  Every object is kept, each with its ``hard`` flag (truncated or difficult); ``BoxItem.without_hard`` drops the
  hard objects (TokenCut's --no_hard, which then skips the images left without objects).
- COCO20k (``coco20k(root)``): the 19,817 train2014 images of ``root/coco_20k_filenames.txt`` (lines
  ``train2014/COCO_train2014_<id>.jpg``) with root/COCO/annotations/instances_train2014.json and
  root/COCO/images/train2014/ (TokenCut's layout; WRC's root/annotations/ and root/train2014/ work too).
  iscrowd annotations are dropped; xywh -> xyxy (x + w, y + h), then each coordinate rounded to the nearest
  integer, halves to even (Python's round, as TokenCut rounds the xyxy values). The images, annotations and
  categories of the listed ids, in list order, are written once to instances_train2014_sel20k.json (TokenCut's
  derived file, reused afterwards and also found at root/) beside the annotations, or, when that folder is not
  writable, in ``$XDG_CACHE_HOME/wrc/coco20k/<hash of the annotation file's path>/`` (default
  ~/.cache/wrc/coco20k/...). Every listed image must have >= 1 annotation (TokenCut's loader needs it).
Salient masks (``salient(root, name)``): root/<ECSSD | DUTS_Test | DUT_OMRON>/{img/<name>.jpg, gt/<name>.png}
(TokenCut's download scripts), or that folder itself; ground truths are read as 8-bit grey, non-zero = object.
"""

from __future__ import annotations

import hashlib
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.datasets import missing
from wrc.checkpoint import atomic_write_text

ARGUMENT = "protocol.root"
VOC_YEARS = {"voc07": "2007", "voc12": "2012"}
VOC_LAYOUT = "VOC{year}/VOCdevkit/VOC{year}/{{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/<split>.txt}}"
COCO_LIST, COCO_ANNOTATIONS, COCO_DERIVED = ("coco_20k_filenames.txt", "instances_train2014.json",
                                             "instances_train2014_sel20k.json")
COCO_LAYOUT = ("coco_20k_filenames.txt, COCO/annotations/instances_train2014.json and COCO/images/train2014/*.jpg "
               "(or annotations/ and train2014/ beside the list)")
SALIENT_FOLDERS = {"ecssd": "ECSSD", "duts_te": "DUTS_Test", "dut_omron": "DUT_OMRON"}
SALIENT_LAYOUT = "{folder}/img/<name>.jpg and {folder}/gt/<name>.png"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class BoxItem:
    """One image of an object-discovery dataset."""

    name: str
    image: Path
    boxes: np.ndarray  # (K, 4) float [x1, y1, x2, y2], pixels of the original image, x2 and y2 exclusive
    classes: list[str] = field(default_factory=list)
    hard: np.ndarray | None = None  # (K,) bool per object: truncated or difficult (VOC); None: no object is hard

    def __post_init__(self) -> None:
        self.hard = (np.zeros(len(self.boxes), dtype=bool) if self.hard is None
                     else np.asarray(self.hard, dtype=bool).reshape(-1))
        if len(self.hard) != len(self.boxes) or (self.classes and len(self.classes) != len(self.boxes)):
            raise ValueError(f"{self.name}: {len(self.boxes)} boxes, {len(self.classes)} classes and "
                             f"{len(self.hard)} hard flags must agree")

    def without_hard(self) -> BoxItem:
        """This image with its truncated or difficult objects removed (boxes, classes and flags alike)."""
        easy = ~self.hard
        classes = [c for c, keep in zip(self.classes, easy, strict=True) if keep] if self.classes else []
        return BoxItem(self.name, self.image, self.boxes[easy], classes, self.hard[easy])


@dataclass
class MaskItem:
    """One image of a salient-object dataset."""

    name: str
    image: Path
    mask: Path


@dataclass
class Listing:
    """A dataset's items and the facts a result record states."""

    name: str
    split: str
    root: Path
    items: list

    def __len__(self) -> int:
        return len(self.items)


def _root(root: str | os.PathLike | None, layout: str) -> Path:
    if root is None or str(root) == "":
        raise ValueError(f"{ARGUMENT} is not set: pass {ARGUMENT}=/path/to/the/folder holding {layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise missing(ARGUMENT, path, layout)
    return path


def _require_files(paths: list[Path], source: str, layout: str) -> None:
    """One error naming the first missing file of ``paths`` (``source`` says who asks for them) and the count."""
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{ARGUMENT}: {len(absent)} of the {len(paths)} files {source} are missing, e.g. "
                                f"{absent[0]}; expected the layout {layout}")


def voc(root: str | os.PathLike | None, dataset: str = "voc07", split: str = "trainval") -> Listing:
    """VOC07 or VOC12 (``dataset`` voc07 | voc12) ``split`` with every object's box (module docstring)."""
    year = VOC_YEARS[dataset]
    layout = VOC_LAYOUT.format(year=year)
    base_root = _root(root, layout)
    candidates = [base_root / f"VOC{year}" / "VOCdevkit" / f"VOC{year}", base_root / "VOCdevkit" / f"VOC{year}",
                  base_root / f"VOC{year}", base_root]
    base = next((c for c in candidates if (c / "ImageSets" / "Main").is_dir()), None)
    if base is None:
        raise missing(ARGUMENT, candidates[0] / "ImageSets" / "Main", layout)
    listing = base / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise missing(f"protocol.split={split!r}", listing, layout)
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{listing} lists no images")
    images = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
    annotations = [base / "Annotations" / f"{i}.xml" for i in ids]
    _require_files(images + annotations, f"listed in {listing}", layout)
    items = []
    for name, image, xml in zip(ids, images, annotations, strict=True):
        boxes, classes, hard = read_voc_xml(xml)
        items.append(BoxItem(name, image, boxes, classes, hard))
    return Listing(dataset, split, base, items)


def _integer(node: ET.Element, tag: str, xml: Path, default: int | None = None) -> int:
    child = node.find(tag)
    if child is None or child.text is None:
        if default is not None:
            return default
        raise ValueError(f"{xml}: <{node.tag}> has no <{tag}>")
    try:
        return int(float(child.text))
    except ValueError:
        raise ValueError(f"{xml}: <{tag}> must be a number; got {child.text!r}") from None


def read_voc_xml(xml: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(boxes (K, 4) with xmin, ymin made 0-based, class names, (K,) bool: each object truncated or difficult)."""
    try:
        annotation = ET.parse(xml).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{xml} is not a readable VOC annotation ({err})") from None
    boxes, classes, hard = [], [], []
    for obj in annotation.findall("object"):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml}: an <object> has no <bndbox>")
        x1, y1, x2, y2 = (_integer(box, tag, xml) for tag in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x1 - 1, y1 - 1, x2, y2])
        classes.append((obj.findtext("name") or "").strip())
        hard.append(bool(_integer(obj, "truncated", xml, 0) or _integer(obj, "difficult", xml, 0)))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), classes, np.asarray(hard, dtype=bool)


def _first(paths: list[Path], is_dir: bool = False) -> Path | None:
    return next((p for p in paths if (p.is_dir() if is_dir else p.is_file())), None)


def cache_folder(annotations: Path) -> Path:
    """Where the derived COCO20k file goes when the annotations' folder is not writable (module docstring)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(str(annotations.resolve()).encode()).hexdigest()[:16]
    return base / "wrc" / "coco20k" / key


def writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def coco20k(root: str | os.PathLike | None) -> Listing:
    """COCO20k (module docstring): the listed images with their non-crowd boxes."""
    base = _root(root, COCO_LAYOUT)
    listing = _first([base / COCO_LIST, base / "COCO" / COCO_LIST])
    if listing is None:
        raise missing(ARGUMENT, base / COCO_LIST, COCO_LAYOUT)
    annotations = _first([base / "COCO" / "annotations" / COCO_ANNOTATIONS, base / "annotations" / COCO_ANNOTATIONS])
    images_dir = _first([base / "COCO" / "images" / "train2014", base / "train2014", base / "images" / "train2014"],
                        is_dir=True)
    if annotations is None:
        raise missing(ARGUMENT, base / "COCO" / "annotations" / COCO_ANNOTATIONS, COCO_LAYOUT)
    if images_dir is None:
        raise missing(ARGUMENT, base / "COCO" / "images" / "train2014", COCO_LAYOUT)
    files = [Path(line.strip()).name for line in listing.read_text().splitlines() if line.strip()]
    if not files:
        raise ValueError(f"{listing} lists no images")
    ids = [coco_image_id(name, listing) for name in files]
    selection = load_selection(annotations, base, ids, listing)
    images = [images_dir / name for name in files]
    _require_files(images, f"listed in {listing}", COCO_LAYOUT)
    categories = {c["id"]: c["name"] for c in selection["categories"]}
    by_image: dict[int, list[dict]] = {i: [] for i in ids}
    for ann in selection["annotations"]:
        by_image.get(ann["image_id"], []).append(ann)  # annotations of unlisted images (if any) are ignored
    items = []
    for image_id, name, path in zip(ids, files, images, strict=True):
        kept = [a for a in by_image[image_id] if not a.get("iscrowd", 0)]
        boxes = np.round([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in kept)]).reshape(-1, 4)
        items.append(BoxItem(Path(name).stem, path, boxes.astype(np.float64),
                             [categories.get(a["category_id"], str(a["category_id"])) for a in kept]))
    return Listing("coco20k", "train", base, items)


def coco_image_id(file_name: str, listing: Path) -> int:
    """The id of ``COCO_train2014_000000560992.jpg``: the integer after the last underscore."""
    try:
        return int(Path(file_name).stem.rsplit("_", 1)[-1])
    except ValueError:
        raise ValueError(f"{listing}: {file_name!r} is not a COCO file name like "
                         "train2014/COCO_train2014_000000560992.jpg") from None


def load_selection(annotations: Path, base: Path, ids: list[int], listing: Path) -> dict:
    """The derived sel20k annotations: an existing file (checked against the list), else built and written once."""
    places = [annotations.parent / COCO_DERIVED, base / COCO_DERIVED, cache_folder(annotations) / COCO_DERIVED]
    existing = _first(places)
    if existing is not None:
        selection = json.loads(existing.read_text())
        listed = [image["id"] for image in selection.get("images", [])]
        if listed != ids:
            raise ValueError(f"{existing} holds other images than {listing} (derived from another list): delete it "
                             "and it is rebuilt from the annotations")
        check_annotated(selection, existing)
        return selection
    selection = select_images(json.loads(annotations.read_text()), ids, annotations)
    target = places[0] if writable(annotations.parent) else places[2]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(selection))
    return selection


def select_images(full: dict, ids: list[int], annotations: Path) -> dict:
    """Images, annotations and categories of ``ids`` from a COCO annotation file, in the order of ``ids``."""
    images = {image["id"]: image for image in full.get("images", [])}
    absent = [i for i in ids if i not in images]
    if absent:
        raise ValueError(f"{annotations} has no image with id {absent[0]} ({len(absent)} listed ids are absent)")
    by_image: dict[int, list[dict]] = {i: [] for i in ids}
    for ann in full.get("annotations", []):
        if ann["image_id"] in by_image:
            by_image[ann["image_id"]].append(ann)
    selection = {"images": [images[i] for i in ids], "annotations": [a for i in ids for a in by_image[i]],
                 "categories": full.get("categories", [])}
    check_annotated(selection, annotations)
    return selection


def check_annotated(selection: dict, source: Path) -> None:
    annotated = {ann["image_id"] for ann in selection["annotations"]}
    bare = [image for image in selection["images"] if image["id"] not in annotated]
    if bare:
        raise ValueError(f"COCO20k image {bare[0].get('file_name', bare[0]['id'])} has no annotations in {source} "
                         f"({len(bare)} such images): every COCO20k image needs >= 1 annotation")


def salient(root: str | os.PathLike | None, dataset: str) -> Listing:
    """ECSSD, DUTS-TE or DUT-OMRON (``dataset`` ecssd | duts_te | dut_omron): images with their mask files."""
    folder = SALIENT_FOLDERS[dataset]
    layout = SALIENT_LAYOUT.format(folder=folder)
    base_root = _root(root, layout)
    base = base_root / folder if (base_root / folder / "img").is_dir() else base_root
    if not (base / "img").is_dir():
        raise missing(ARGUMENT, base_root / folder / "img", layout)
    if not (base / "gt").is_dir():
        raise missing(ARGUMENT, base / "gt", layout)
    images = sorted(p for p in (base / "img").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{base / 'img'} holds no images ({', '.join(IMAGE_SUFFIXES)}); expected the layout {layout}")
    items = [MaskItem(image.stem, image, base / "gt" / f"{image.stem}.png") for image in images]
    _require_files([item.mask for item in items], f"for the images of {base / 'img'}", layout)
    return Listing(dataset, "test", base, items)


def read_mask(path: Path) -> np.ndarray:
    """A ground-truth mask as stored (8-bit grey, 0/255) -> (H, W) bool, non-zero = object."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 0
