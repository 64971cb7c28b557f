"""DAVIS-2017 semi-supervised video object segmentation by label propagation, scored by J&F.

The DINO algorithm as LiFT and WRC run it (evaluation/video/propagation.py): the first frame's annotation is
propagated through each validation sequence with the affinities of the extractor's features on the upsampled
grid (``upsample_factor`` x the token grid), the first frame plus the last 7 frames as context, top-5, a 12-cell
window, temperature 0.1. Frames are resized to ``image_size`` x ``image_size`` (``preprocess=square``, LiFT / WRC,
the default) or to a short side of 480 (``preprocess=dino``, DINO / SRT). The results folder has the official layout
(``run_dir/results/<sequence>/<frame>.png``) and is scored by evaluation/video/jf.py with the official
definitions, which also writes the official CSVs there (the official evaluator can score the same folder).
Metrics: J&F-Mean (the headline), J and F Mean / Recall / Decay as fractions, and seconds_per_frame: the wall time
of each sequence (every frame's features, the propagation, the PNGs) per propagated frame.

Resumable per sequence: a sequence is finished once ``run_dir/finished/<sequence>.json`` (written atomically after
its last frame) exists; finished sequences are skipped on rerun and a half-written one is redone. ``manifest.json``
records the settings, the upsampler, the backbone and the code (wrc's version and git commit; not whether the tree
is dirty); rerunning the same run_dir with others is an error, checked before anything is written there (the
synthetic videos included), and finished sequences without a manifest are refused, not resumed.
``max_sequences`` stops after that many new sequences (a time-limited job), and the same command resumes.

``dataset=synthetic``: generated videos with exact instance masks (evaluation/synthetic/videos.py, 128 x 128
frames; pass ``image_size=128`` so they are not resampled) on the oracle backbone, scored by the same code.

    python -m evaluation protocol=davis protocol.root=/data/DAVIS backbone=dino_vits16_key model=bilinear
    python -m evaluation protocol=davis protocol.dataset=synthetic protocol.image_size=128 model=bilinear
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol
from evaluation.run_identity import StaleRunError, plain, refuse_another_run, run_identity
from evaluation.synthetic.videos import write_davis_layout
from evaluation.video.davis import DavisDataset
from evaluation.video.jf import evaluate_results
from evaluation.video.propagation import (
    PREPROCESSINGS,
    UPSAMPLE_FACTORS,
    FramePreprocessing,
    PropagationConfig,
    propagate_sequence,
)
from wrc.checkpoint import atomic_write_text
from wrc.extractor import DenseFeatureExtractor
from wrc.settings import SettingsError, require_at_least_one

log = logging.getLogger("wrc")
DATASETS = ("davis2017", "synthetic")
RUN_ONLY = ("sequences", "max_sequences")  # which sequences this call runs: not what the results are
MANIFEST, FINISHED, RESULTS = "manifest.json", "finished", "results"


@dataclass
class DavisSettings:
    dataset: str = "davis2017"  # davis2017 | synthetic (generated videos on the oracle backbone)
    root: str | None = None  # the DAVIS folder: ImageSets/2017/, JPEGImages/<resolution>/, Annotations/<resolution>/
    split: str = "val"
    resolution: str = "480p"
    preprocess: str = "square"  # square (LiFT / WRC: image_size^2, PIL bicubic) | dino (short side 480: DINO / SRT)
    image_size: int = 224  # the square side (LiFT / WRC default)
    short_side: int = 480  # the short side of preprocess=dino
    upsample_factor: int = 2  # feature grid = token grid x this (1, 2 or 4); LiFT / WRC propagate on 2x
    context_frames: int = 7  # previous frames besides the first (DINO)
    topk: int = 5
    radius: int = 12  # neighbourhood in cells of the feature grid (Chebyshev)
    temperature: float = 0.1
    sequences: list[str] | None = None  # names of the split to run; None = all of it
    max_sequences: int | None = None  # stop after this many new sequences (resumable); None = run to the end
    synthetic_sequences: int = 8  # videos of dataset=synthetic
    seed: int = 0  # of the synthetic videos

    def __post_init__(self) -> None:
        choices = {"dataset": DATASETS, "preprocess": PREPROCESSINGS, "upsample_factor": UPSAMPLE_FACTORS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise SettingsError(f"protocol.{key}={getattr(self, key)!r}; expected one of {allowed}")
        require_at_least_one(self, "protocol", "image_size", "short_side", "topk", "synthetic_sequences")
        if self.context_frames < 0 or self.radius < 0:
            raise SettingsError(f"protocol.context_frames and protocol.radius must be >= 0; got "
                                f"{self.context_frames} and {self.radius}")
        if not self.temperature > 0:
            raise SettingsError(f"protocol.temperature must be > 0; got {self.temperature}")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise SettingsError(f"protocol.max_sequences must be >= 1 or null; got {self.max_sequences}")
        if isinstance(self.sequences, str):
            self.sequences = [self.sequences]
        if self.sequences is not None:
            self.sequences = [str(name) for name in self.sequences]
            if not self.sequences:
                raise SettingsError("protocol.sequences is an empty list; pass names of the split, or null for all")

    @property
    def preprocessing(self) -> FramePreprocessing:
        return FramePreprocessing(self.preprocess, self.image_size, self.short_side, self.upsample_factor)

    @property
    def propagation(self) -> PropagationConfig:
        return PropagationConfig(self.context_frames, self.topk, self.radius, self.temperature)


def check_manifest(path: Path, identity: dict[str, Any]) -> bool:
    """Refuse to mix results with a run of other settings, upsampler, backbone or code, or with finished sequences
    that no manifest describes; writes nothing. True when the manifest is still to be written (a new run)."""
    identity = plain(identity)
    if not path.is_file():
        finished = sorted(p.stem for p in (path.parent / FINISHED).glob("*.json"))
        if finished:
            raise StaleRunError(f"{path.parent} holds {len(finished)} finished sequence(s) ({', '.join(finished[:5])}"
                             f"{', ...' if len(finished) > 5 else ''}) but no {MANIFEST}: nothing says which settings, "
                             "upsampler, backbone and code produced them, so they cannot be resumed. Use another "
                             f"run_dir, or delete {path.parent / FINISHED} to propagate every sequence again")
        return True
    refuse_another_run(json.loads(path.read_text()), identity, f"{path.parent} holds DAVIS results",
                       "use another run_dir, or delete that folder to start over")
    return False


@register_protocol
class Davis(Protocol):
    name = "davis"
    Settings = DavisSettings
    table = TableSpec(
        columns=(Column("jf_mean", percent=True), Column("j_mean", percent=True), Column("j_recall", percent=True),
                 Column("j_decay", higher_is_better=False, percent=True), Column("f_mean", percent=True),
                 Column("f_recall", percent=True), Column("f_decay", higher_is_better=False, percent=True),
                 Column("seconds_per_frame", higher_is_better=False, unit="s")),
        headline=("jf_mean", "j_mean", "f_mean"), rank_by="jf_mean",
        split_by=("preprocess", "image_size", "grid_scale"),  # columns: "davis2017 square 224 2x"
    )

    def dataset(self, settings: DavisSettings, run_dir: Path) -> DavisDataset:
        """The real dataset, or the synthetic videos written (once) into run_dir/synthetic_data."""
        if settings.dataset == "synthetic":
            root = run_dir / "synthetic_data"
            write_davis_layout(root, settings.synthetic_sequences, settings.seed, settings.split, settings.resolution)
            return DavisDataset(root, settings.split, settings.resolution)
        if not settings.root:
            raise SettingsError("protocol.root is not set: pass protocol.root=/path/to/DAVIS (the folder holding "
                                "ImageSets/2017/, JPEGImages/480p/ and Annotations/480p/), or "
                                "protocol.dataset=synthetic")
        return DavisDataset(settings.root, settings.split, settings.resolution)

    def run(self, extractor: DenseFeatureExtractor, settings: DavisSettings, run_dir: Path) -> Evaluation:
        run_dir = Path(run_dir)
        identity = run_identity(self.name, settings, extractor, run_only=RUN_ONLY)
        new_run = check_manifest(run_dir / MANIFEST, identity)  # before run_dir is touched (synthetic_data included)
        data = self.dataset(settings, run_dir)
        names = self.chosen(settings, data)
        if new_run:  # once the data and the sequences are known good: a failed start leaves no manifest behind
            atomic_write_text(run_dir / MANIFEST, json.dumps(identity, indent=2))
        entry = {"name": "synthetic_videos" if settings.dataset == "synthetic" else "davis2017",
                 "split": settings.split, "root": None if settings.dataset == "synthetic" else str(data.root),
                 "sequences": len(names)}
        (run_dir / FINISHED).mkdir(parents=True, exist_ok=True)
        new = 0
        for name in tqdm(names, desc="davis sequences", unit="sequence"):
            if (run_dir / FINISHED / f"{name}.json").is_file():
                continue
            if settings.max_sequences is not None and new >= settings.max_sequences:
                log.info("stopping after %d new sequence(s) (protocol.max_sequences); run again to resume", new)
                return Evaluation(metrics={}, dataset=entry, completed=False)
            self.propagate(extractor, settings, data, name, run_dir)
            new += 1
        scores = evaluate_results(data, run_dir / RESULTS, names)
        summary, infos = scores.summary(), [self.finished(run_dir, name) for name in names]
        metrics = {key: summary[official] for key, official in (
            ("jf_mean", "J&F-Mean"), ("j_mean", "J-Mean"), ("j_recall", "J-Recall"), ("j_decay", "J-Decay"),
            ("f_mean", "F-Mean"), ("f_recall", "F-Recall"), ("f_decay", "F-Decay"))}
        metrics["seconds_per_frame"] = sum(i["seconds"] for i in infos) / max(1, sum(i["frames"] - 1 for i in infos))
        return Evaluation(metrics=metrics, dataset=entry, resolution=self.resolution(settings, infos),
                          per_item={"per_object": scores.per_object()})

    @staticmethod
    def chosen(settings: DavisSettings, data: DavisDataset) -> list[str]:
        if settings.sequences is None:
            return list(data.sequences)
        unknown = [name for name in settings.sequences if name not in data.sequences]
        if unknown:
            raise SettingsError(f"protocol.sequences: {unknown} are not in {data.split}.txt of {data.root} "
                                f"(it lists {len(data.sequences)}: {', '.join(data.sequences[:5])}, ...)")
        return list(settings.sequences)

    @staticmethod
    def propagate(extractor: DenseFeatureExtractor, settings: DavisSettings, data: DavisDataset, name: str,
                  run_dir: Path) -> None:
        """Propagate one sequence from scratch (a half-written one is removed first), then mark it finished."""
        out_dir = run_dir / RESULTS / name
        shutil.rmtree(out_dir, ignore_errors=True)
        tick = time.perf_counter()
        with torch.no_grad():
            info = propagate_sequence(extractor, data.frames(name), data.first_annotation(name), out_dir,
                                      settings.preprocessing, settings.propagation)
        marker = {"frames": info.frames, "seconds": time.perf_counter() - tick,
                  "processed_size": list(info.processed_size), "grid": list(info.grid)}
        atomic_write_text(run_dir / FINISHED / f"{name}.json", json.dumps(marker))

    @staticmethod
    def finished(run_dir: Path, name: str) -> dict[str, Any]:
        return json.loads((run_dir / FINISHED / f"{name}.json").read_text())

    @staticmethod
    def resolution(settings: DavisSettings, infos: list[dict[str, Any]]) -> dict[str, Any]:
        """The preprocessing and the processed sizes and feature grids (one, or every distinct one)."""
        def distinct(key: str) -> list:
            values = sorted({tuple(i[key]) for i in infos})
            return list(values[0]) if len(values) == 1 else [list(v) for v in values]

        side = settings.image_size if settings.preprocess == "square" else settings.short_side
        return {"preprocess": settings.preprocess, "image_size": side, "upsample_factor": settings.upsample_factor,
                "grid_scale": f"{settings.upsample_factor}x", "processed_size": distinct("processed_size"),
                "grid": distinct("grid")}
