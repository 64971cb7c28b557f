"""SPair-71k keypoint correspondence scored by PCK: the LiFT protocol (Walmer et al.'s vit_analysis), as WRC runs it.

Sampling: per category (sorted), ``pairs_per_category`` = 100 pair files of the test split are drawn
*with replacement* from one random stream seeded once (``seed`` 0) before the loop over all categories
(None: every pair once). ``categories=[...]`` still draws for every category and keeps its own: each
scores the pairs a full run scores. LiFT took its categories from unsorted ``os.listdir``, so its exact
sample is not reproducible; this one is deterministic for a seed.

Images: both are pad-resized to ``image_size`` (LiFT Table 1: 56, 112, 224, 448; or any multiple of the
backbone's patch), keypoints scaled and offset alike; slots invisible in either image are dropped. 56
pixels are 3.5 patches of 16, so there the backbone's ``size_policy`` decides (resize: 4 x 4 tokens of the
image resized to 64; LiFT's extractor dropped the last 8 pixels: 3 x 3 tokens).

Matching: descriptors are the extractor's features on ``upsample_factor`` x the token grid (2, as LiFT and
WRC; 1 = the backbone's own grid), L2-normalised per location and bilinearly resized to the image. The
facet is the backbone's (``backbone=dino_vits16_key`` is LiFT's). Each source keypoint visible in both
images takes the descriptor at (row floor(y), col int(x)) and goes to the most similar target pixel; it is
correct at alpha iff the error is < alpha * max side of the target box (scaled to the padded frame). PCK
per category pools its keypoints; the metrics are means over categories (fractions; tables show percent).
The LiFT paper says features were resized with Lanczos; its code (and WRC's) resizes them bilinearly: the
default here; ``feature_resize=lanczos`` is the paper's (PIL's LANCZOS weights, to the padded square).

Resuming: each category's counts are written atomically to ``run_dir/spair_categories/<category>.json``
when it finishes, with the identity of the settings, upsampler, backbone and code (version and commit),
checked on resume before anything else is done: a killed run resumes at the next category;
``max_categories`` stops on purpose after that many in one call. ``dataset=synthetic`` writes generated
pairs with known warps (evaluation/synthetic/keypoints.py) into ``run_dir/synthetic_data`` in the SPair
layout and scores them on the oracle backbone the same way; a run folder holding another run's categories
is refused before that data is touched.

    python -m evaluation protocol=spair protocol.root=/data/SPair-71k backbone=dino_vits16_key model=bilinear
    python -m evaluation protocol=spair protocol.dataset=synthetic model=bilinear
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from evaluation.keypoints.matching import RESIZES, DescriptorCache, correct_counts, descriptor_grid, match_points
from evaluation.keypoints.spair import (
    SPLITS,
    KeypointPair,
    PadResize,
    check_layout,
    keypoint_slots,
    list_categories,
    load_padded,
    pair_files,
    read_pair,
    sample_pairs,
)
from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol
from evaluation.run_identity import StaleRunError, refuse_another_run, run_identity
from evaluation.synthetic.keypoints import write_synthetic_spair
from wrc.checkpoint import atomic_write_text
from wrc.extractor import DenseFeatureExtractor
from wrc.settings import SettingsError, require_at_least_one

log = logging.getLogger("wrc")
ALPHAS = (0.1, 0.05, 0.01)
LIFT_SIZES = (56, 112, 224, 448)  # LiFT Table 1; 56 is no multiple of 16: the backbone's size_policy applies
DATASETS = {"spair71k": "spair71k", "synthetic": "synthetic_keypoints"}  # setting -> the record's dataset name
RUN_ONLY = ("batch_size", "cache_mb", "max_categories")  # how a run is carried out, not what it measures
STATE_DIR = "spair_categories"


def metric_name(alpha: float) -> str:
    return f"pck@{alpha:g}"


@dataclass
class SPairSettings:
    dataset: str = "spair71k"  # spair71k | synthetic (generated pairs with known warps, on the oracle backbone)
    root: str | None = None  # the SPair-71k folder (synthetic: unused, written into run_dir/synthetic_data)
    split: str = "test"  # test (LiFT, WRC) | val | trn
    image_size: int = 224  # side of the padded square: LiFT Table 1 has 56, 112, 224, 448 (or a multiple of the patch)
    upsample_factor: int = 2  # descriptors on factor x the token grid (LiFT/WRC: 2; 1 = the backbone's own grid)
    feature_resize: str = "bilinear"  # descriptor grid -> image: bilinear (LiFT's, WRC's code) | lanczos (LiFT's text)
    pairs_per_category: int | None = 100  # drawn with replacement (LiFT); null = every pair of the split once
    categories: list[str] | None = None  # null = every category (sorted)
    alphas: list[float] = field(default_factory=lambda: list(ALPHAS))  # PCK thresholds, a subset of ALPHAS
    seed: int = 0  # the sampling stream, seeded once before the category loop (LiFT: 0); and the synthetic scenes
    batch_size: int = 8  # images per extractor call
    cache_mb: int = 2048  # descriptor grids kept for images shared by pairs (on the extractor's device)
    synthetic_pairs: int = 20  # generated pairs per synthetic category
    max_categories: int | None = None  # stop on purpose after this many categories in one call; rerun resumes

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise SettingsError(f"protocol.dataset={self.dataset!r}; expected one of {tuple(DATASETS)}")
        if self.feature_resize not in RESIZES:
            raise SettingsError(f"protocol.feature_resize={self.feature_resize!r}; expected one of {RESIZES}")
        if self.split not in SPLITS:
            raise SettingsError(f"protocol.split={self.split!r}; expected one of {SPLITS} (LiFT and WRC use 'test')")
        require_at_least_one(self, "protocol", "image_size", "upsample_factor", "batch_size", "cache_mb",
                             "synthetic_pairs")
        for key in ("pairs_per_category", "max_categories"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise SettingsError(f"protocol.{key} must be >= 1, or null; got {getattr(self, key)}")
        alphas = [float(a) for a in self.alphas]
        if not alphas or any(min(abs(a - b) for b in ALPHAS) > 1e-9 for a in alphas):
            raise SettingsError(f"protocol.alphas={list(self.alphas)}; expected a non-empty subset of {list(ALPHAS)} "
                                f"(the table's columns)")
        self.alphas = [b for b in ALPHAS if any(abs(a - b) <= 1e-9 for a in alphas)]
        if self.categories is not None:
            self.categories = [str(c) for c in self.categories]


@register_protocol
class SPair(Protocol):
    name = "spair"
    Settings = SPairSettings
    table = TableSpec(
        columns=(*(Column(metric_name(a), percent=True) for a in ALPHAS),
                 Column("seconds_per_pair", higher_is_better=False, unit="s")),
        headline=tuple(metric_name(a) for a in ALPHAS), rank_by=metric_name(ALPHAS[0]), split_by=("image_size",),
    )

    @torch.no_grad()
    def run(self, extractor: DenseFeatureExtractor, settings: SPairSettings, run_dir: Path) -> Evaluation:
        patch = extractor.backbone.patch_size
        if settings.image_size % patch and settings.image_size not in LIFT_SIZES:
            raise SettingsError(f"protocol.image_size={settings.image_size} is neither one of LiFT's sizes "
                                f"{LIFT_SIZES} nor a multiple of the backbone's patch size {patch} "
                                f"(e.g. {patch * max(1, round(settings.image_size / patch))})")
        identity = run_identity(self.name, settings, extractor, run_only=RUN_ONLY)
        check_saved_identities(run_dir / STATE_DIR, identity)  # before data_root (re)writes synthetic data
        root = self.data_root(settings, run_dir)
        known = list_categories(root)
        categories = list_categories(root, settings.categories)
        drawn = known if settings.pairs_per_category is not None else categories  # the stream runs over all
        files = pair_files(root, settings.split, drawn, known, requested=categories)
        sample = sample_pairs(files, settings.pairs_per_category, settings.seed, categories)
        dataset = {"name": DATASETS[settings.dataset], "split": settings.split, "root": str(root),
                   "pairs": sum(len(p) for p in sample.values()), "categories": categories,
                   "pairs_per_category": settings.pairs_per_category}
        images = PaddedImages(settings.image_size)
        cache = DescriptorCache(
            lambda paths: descriptor_grid(extractor, images.load(paths).to(extractor.device), settings.upsample_factor),
            settings.cache_mb * 2**20, settings.batch_size)
        results, scored = {}, 0
        for category in tqdm(categories, desc="spair categories"):
            path = run_dir / STATE_DIR / f"{category}.json"
            results[category] = read_category(path, identity, [p.name for p in sample[category]])
            if results[category] is not None:
                continue
            if settings.max_categories is not None and scored >= settings.max_categories:
                log.info("stopping after %d categories (protocol.max_categories); run again to resume", scored)
                return Evaluation(metrics={}, dataset=dataset, completed=False)
            results[category] = score_category(cache, images, root, category, sample[category], settings)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"identity": identity, **results[category]}, indent=1))
            scored += 1
        metrics, per_item = summarise(results, settings.alphas)
        grid = token_grid(extractor.backbone, settings.image_size)
        resolution = {"image_size": settings.image_size, "upsample_factor": settings.upsample_factor,
                      "descriptor_grid": [n * settings.upsample_factor for n in grid],
                      "size_policy": extractor.backbone.spec().get("size_policy")}
        return Evaluation(metrics=metrics, dataset=dataset, resolution=resolution, per_item=per_item)

    @staticmethod
    def data_root(settings: SPairSettings, run_dir: Path) -> Path:
        """The dataset root, after writing the synthetic dataset (once) when that is the one asked for."""
        if settings.dataset == "synthetic":
            root = write_synthetic_spair(run_dir / "synthetic_data", settings.synthetic_pairs, settings.image_size,
                                         settings.seed, settings.split)
            return check_layout(root, settings.split)
        return check_layout(settings.root, settings.split)


def check_identity(path: Path, saved: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse the counts in ``path`` when the identity ``saved`` with them is not this run's."""
    refuse_another_run(saved, identity, f"{path} holds results",
                       "use another run_dir, or delete its spair_categories/ folder to start over")


def check_saved_identities(folder: Path, identity: dict[str, Any]) -> None:
    """Refuse a run folder whose finished categories were scored by another run, before anything is (re)written
    (the synthetic dataset of another seed would replace the one they were scored on)."""
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        check_identity(path, read_saved(path).get("identity", {}), identity)


def read_saved(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:  # written atomically: only a foreign or hand-edited file gets here
        raise ValueError(f"{path} cannot be read ({err}); delete it to score the category again") from None


def token_grid(backbone: Any, size: int) -> tuple[int, int]:
    """The token grid of a size x size image (the backbone's own rule where it has one)."""
    if hasattr(backbone, "grid_size"):
        return tuple(backbone.grid_size(size, size))
    return size // backbone.patch_size, size // backbone.patch_size


class PaddedImages:
    """Images pad-resized to ``size``, each checked against the size (W, H) the first pair file naming it says."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.expected: dict[Path, tuple[tuple[int, int], Path]] = {}

    def expect(self, pair: KeypointPair) -> None:
        self.expected.setdefault(pair.source, (pair.source_size, pair.path))
        self.expected.setdefault(pair.target, (pair.target_size, pair.path))

    def load(self, paths: list[Path]) -> torch.Tensor:
        return torch.stack([load_padded(p, self.size, *self.expected[p]) for p in paths])


def read_category(path: Path, identity: dict[str, Any], sample: list[str]) -> dict[str, Any] | None:
    """A finished category's counts when ``path`` exists and belongs to this run (same identity, same sampled pair
    files); None when it does not exist."""
    if not path.is_file():
        return None
    saved = read_saved(path)
    check_identity(path, saved.pop("identity", {}), identity)
    if saved.get("sample") != sample:
        raise StaleRunError(f"{path} was scored on other pair files than the dataset now gives (files added or "
                            "removed?): delete its spair_categories/ folder to start over")
    return saved


def score_category(cache: DescriptorCache, images: PaddedImages, root: Path, category: str, paths: list[Path],
                   settings: SPairSettings) -> dict[str, Any]:
    """Correct keypoints per alpha, mutually visible keypoints, pairs and seconds of one category's sampled pairs."""
    tick = time.perf_counter()
    slots = keypoint_slots(root, category)
    pairs = {path: read_pair(path, root, category, slots) for path in dict.fromkeys(paths)}  # all checked first
    for pair in pairs.values():
        images.expect(pair)
    correct, keypoints = [0] * len(settings.alphas), 0
    with tqdm(total=len(paths), desc=category, leave=False) as bar:
        for start in range(0, len(paths), settings.batch_size):
            group = [pairs[p] for p in paths[start : start + settings.batch_size]]
            grids = cache.get([image for pair in group for image in (pair.source, pair.target)])
            for index, pair in enumerate(group):
                counts, visible = score_pair(pair, grids[2 * index], grids[2 * index + 1], settings)
                correct = [c + n for c, n in zip(correct, counts, strict=True)]
                keypoints += visible
                bar.update()
    return {"category": category, "pairs": len(paths), "distinct_pairs": len(pairs), "keypoints": keypoints,
            "correct": {metric_name(a): n for a, n in zip(settings.alphas, correct, strict=True)},
            "seconds": time.perf_counter() - tick, "sample": [p.name for p in paths]}


def score_pair(pair: KeypointPair, source_grid: torch.Tensor, target_grid: torch.Tensor,
               settings: SPairSettings) -> tuple[list[int], int]:
    """(correct keypoints per alpha, keypoints visible in both images) of one pair."""
    size = settings.image_size
    source, target = PadResize.of(*pair.source_size, size), PadResize.of(*pair.target_size, size)
    source_points, target_points = source.points(pair.source_points), target.points(pair.target_points)
    both = (pair.source_points[:, 2] > 0) & (pair.target_points[:, 2] > 0)
    if not both.any():
        return [0] * len(settings.alphas), 0
    predicted = match_points(source_grid, target_grid, source_points[both, :2], size, settings.feature_resize)
    x1, y1, x2, y2 = pair.target_box
    box_side = max(x2 - x1, y2 - y1) * target.scale
    return correct_counts(predicted, target_points[both, :2], box_side, settings.alphas), int(both.sum())


def summarise(results: dict[str, dict[str, Any]], alphas: list[float]) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics (means over categories with keypoints) and per-category PCK, keypoint and pair counts."""
    scored = [c for c, r in results.items() if r["keypoints"] > 0]
    if not scored:
        raise ValueError(f"no keypoint is visible in both images of any sampled pair of {sorted(results)}: "
                         "nothing to score")
    skipped = sorted(set(results) - set(scored))
    if skipped:
        log.warning("categories without keypoints visible in both images, left out of the means: %s", skipped)
    per_item: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    for alpha in alphas:
        name = metric_name(alpha)
        per_item[name] = {c: (r["correct"][name] / r["keypoints"] if r["keypoints"] else None)
                          for c, r in results.items()}
        metrics[name] = statistics.fmean(per_item[name][c] for c in scored)
    per_item["keypoints"] = {c: r["keypoints"] for c, r in results.items()}
    per_item["pairs"] = {c: r["pairs"] for c, r in results.items()}
    pairs = sum(r["pairs"] for r in results.values())
    metrics["seconds_per_pair"] = sum(r["seconds"] for r in results.values()) / pairs
    return metrics, per_item
