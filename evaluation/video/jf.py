"""J&F of semi-supervised video object segmentation, with the definitions of the official DAVIS-2017 evaluation.

    python -m evaluation.video.jf --davis /data/DAVIS --results outputs/.../results [--split val]

scores any folder in the official results layout (``<results>/<sequence>/<frame>.png``, indexed PNGs of object
ids) and writes the official CSVs into it: ``global_results-<split>.csv`` (J&F-Mean, J-Mean, J-Recall, J-Decay,
F-Mean, F-Recall, F-Decay) and ``per-sequence_results-<split>.csv`` (one row ``<sequence>_<object id>`` per object
track), values as fractions with three decimals. Scores are always recomputed from the PNGs; existing CSVs are
replaced (and the replacement logged), never re-used.

Definitions:
- objects are the ids 1..max of the first frame's annotation (void, 255, counts as background: the
  semi-supervised task passes no void mask); only frames 1..N-2 are scored (the first is given, the last skipped);
  a sequence whose first frame holds no object adds no track (its results must still exist and use no id);
- J = |M n G| / |M u G| per object and frame, 1 when the union is empty;
- F: boundaries by ``seg2bmap``, each dilated by a disk of radius ceil(0.008 * image diagonal) (x^2 + y^2 <= r^2);
  precision = |B_M n dil(B_G)| / |B_M|, recall = |B_G n dil(B_M)| / |B_G|, F = 2PR / (P + R) (0 when P + R = 0);
  no predicted boundary but a true one: P = 1, R = 0; a predicted one but no true one: P = 0, R = 1; neither: 1, 1;
- per object track: Mean, Recall = share of frames > 0.5, Decay = mean of the first minus mean of the last of
  4 bins (edges round(linspace(1, n, 5)) - 1, each bin inclusive of its end edge);
- global: means over all object tracks (not sequences); J&F-Mean = (J-Mean + F-Mean) / 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from evaluation.datasets import missing
from evaluation.video.davis import VOID, DavisDataset, read_label
from wrc.checkpoint import atomic_write_text

log = logging.getLogger("wrc")

BOUNDARY_TOLERANCE = 0.008  # of the image diagonal
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
RESULTS_LAYOUT = "<results>/<sequence>/<frame>.png (indexed PNGs of object ids, named as the annotations)"


def jaccard(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Region similarity |M n G| / |M u G| of two binary masks; 1 when both are empty."""
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    union = np.count_nonzero(prediction | truth)
    return 1.0 if union == 0 else np.count_nonzero(prediction & truth) / union


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask: pixels that differ from their east, south or south-east neighbour.

    Neighbours outside the image count as background, except that the last row compares with the east
    neighbour only, the last column with the south one only, and the bottom-right pixel is never a boundary
    (so the image border itself draws no boundary)."""
    mask = np.asarray(mask).astype(bool)
    east, south, south_east = (np.zeros_like(mask) for _ in range(3))
    east[:, :-1] = mask[:, 1:]
    south[:-1, :] = mask[1:, :]
    south_east[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    boundary[-1, :] = mask[-1, :] ^ east[-1, :]
    boundary[:, -1] = mask[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def disk(radius: int) -> np.ndarray:
    """The binary disk footprint x^2 + y^2 <= radius^2, of side 2 radius + 1."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def boundary_tolerance(shape: Sequence[int]) -> int:
    """Pixels a boundary may be off by: ceil(0.008 * the diagonal) (8 at 854 x 480, 1 at 64 x 48)."""
    return math.ceil(BOUNDARY_TOLERANCE * math.hypot(shape[0], shape[1]))


def f_measure(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Boundary F-measure of two binary masks of the same size (module docstring)."""
    predicted, true = seg2bmap(prediction), seg2bmap(truth)
    n_predicted, n_true = np.count_nonzero(predicted), np.count_nonzero(true)
    if n_predicted == 0 and n_true == 0:
        return 1.0
    if n_predicted == 0 or n_true == 0:
        return 0.0  # (P, R) = (1, 0) or (0, 1)
    footprint = disk(boundary_tolerance(prediction.shape))
    precision = np.count_nonzero(predicted & ndimage.binary_dilation(true, structure=footprint)) / n_predicted
    recall = np.count_nonzero(true & ndimage.binary_dilation(predicted, structure=footprint)) / n_true
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def decay_bins(count: int) -> list[slice]:
    """The 4 bins of the decay over ``count`` frames: edges round(linspace(1, count, 5)) - 1 (halves up),
    each bin running from its edge to the next one inclusive."""
    edges = (np.floor(np.linspace(1, count, 5) + 0.5) - 1).astype(int)
    return [slice(edges[i], edges[i + 1] + 1) for i in range(4)]


@dataclass
class TrackScore:
    """One object of one sequence: J and F per scored frame, and their statistics."""

    sequence: str
    object_id: int
    j: np.ndarray
    f: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"

    @staticmethod
    def statistics(values: np.ndarray) -> tuple[float, float, float]:
        """(Mean, Recall, Decay) of per-frame values."""
        bins = decay_bins(len(values))
        decay = float(np.nanmean(values[bins[0]]) - np.nanmean(values[bins[3]]))
        return float(np.nanmean(values)), float(np.nanmean(values > 0.5)), decay


@dataclass
class JFResult:
    """Every object track of the scored sequences and the official global numbers."""

    tracks: list[TrackScore]

    def summary(self) -> dict[str, float]:
        """The global numbers under their official names (fractions)."""
        j = np.array([TrackScore.statistics(t.j) for t in self.tracks]).reshape(-1, 3)
        f = np.array([TrackScore.statistics(t.f) for t in self.tracks]).reshape(-1, 3)
        j_stats, f_stats = j.mean(axis=0), f.mean(axis=0)
        values = [(j_stats[0] + f_stats[0]) / 2, *j_stats, *f_stats]
        return dict(zip(GLOBAL_COLUMNS, (float(v) for v in values), strict=True))

    def per_object(self) -> dict[str, dict[str, float]]:
        return {t.name: {"j_mean": float(np.nanmean(t.j)), "f_mean": float(np.nanmean(t.f))} for t in self.tracks}


def score_sequence(sequence: str, annotations: Sequence[Path], results: Path) -> list[TrackScore]:
    """J and F of every object of ``sequence`` on its frames 1..N-2, from ``results/<sequence>/<frame>.png``."""
    if len(annotations) < 3:
        raise ValueError(f"sequence {sequence!r} has {len(annotations)} annotated frames; J&F scores frames 1..N-2, "
                         "so it needs at least 3")
    first = read_label(annotations[0])
    num_objects = int(np.where(first == VOID, 0, first).max())
    if num_objects == 0:
        log.warning("sequence %s: its first frame %s holds no object; it adds no object track (its results are "
                    "still read and checked, as the official evaluation does)", sequence, annotations[0])
    ids = np.arange(1, num_objects + 1)[:, None, None]
    j, f = [], []
    for annotation in annotations[1:-1]:
        truth = read_label(annotation)
        truth = np.where(truth == VOID, 0, truth)
        path = results / sequence / f"{annotation.stem}.png"
        if not path.is_file():
            raise missing("results", path, f"{RESULTS_LAYOUT}: sequence {sequence!r} has no result for frame "
                          f"{annotation.stem} (frames 1..N-2 are scored); rerun the propagation or pass the folder "
                          "that holds it")
        prediction = read_label(path)
        if prediction.shape != truth.shape:
            raise ValueError(f"{path}: result of {prediction.shape[1]}x{prediction.shape[0]} pixels for a "
                             f"{truth.shape[1]}x{truth.shape[0]} annotation of sequence {sequence!r}, frame "
                             f"{annotation.stem}; results must have the annotations' size")
        extra = np.unique(prediction[prediction > num_objects])
        if extra.size:
            raise ValueError(f"{path}: sequence {sequence!r}, frame {annotation.stem}: result ids "
                             f"{extra.tolist()} are above the {num_objects} object(s) of the ground truth "
                             f"(ids 1..{num_objects} of {annotations[0].name}); results may only use those ids")
        predicted, true = prediction[None] == ids, truth[None] == ids
        j.append([jaccard(p, t) for p, t in zip(predicted, true, strict=True)])
        f.append([f_measure(p, t) for p, t in zip(predicted, true, strict=True)])
    frames = (len(annotations) - 2, num_objects)  # (scored frames, 0) when the first frame holds no object
    j_values, f_values = np.array(j, dtype=float).reshape(frames), np.array(f, dtype=float).reshape(frames)
    return [TrackScore(sequence, k + 1, j_values[:, k], f_values[:, k]) for k in range(num_objects)]


def _csv(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"  # pandas' float_format="%.3f" (NaN as an empty field)


def write_csvs(result: JFResult, results: Path, split: str) -> tuple[Path, Path]:
    """The official CSVs in ``results``, replacing old ones (logged): they are never read back."""
    summary = result.summary()
    global_path = results / f"global_results-{split}.csv"
    sequence_path = results / f"per-sequence_results-{split}.csv"
    tables = {
        global_path: [",".join(GLOBAL_COLUMNS), ",".join(_csv(summary[c]) for c in GLOBAL_COLUMNS)],
        sequence_path: [",".join(SEQUENCE_COLUMNS)] + [
            f"{t.name},{_csv(float(np.nanmean(t.j)))},{_csv(float(np.nanmean(t.f)))}" for t in result.tracks],
    }
    results.mkdir(parents=True, exist_ok=True)
    for path, lines in tables.items():
        if path.exists():
            log.info("replacing %s: scores are always recomputed from the result PNGs", path)
        atomic_write_text(path, "\n".join(lines) + "\n")
    return global_path, sequence_path


def evaluate_results(dataset: DavisDataset, results: str | os.PathLike, sequences: Iterable[str] | None = None,
                     write: bool = True) -> JFResult:
    """Score ``results`` on ``sequences`` of ``dataset`` (all of its split when None) and write the CSVs."""
    results = Path(results)
    if not results.is_dir():
        raise missing("results", results, RESULTS_LAYOUT)
    names = list(dataset.sequences if sequences is None else sequences)
    if not names:
        raise ValueError(f"no sequence to score: the list of sequences is empty; pass names of {dataset.split}.txt "
                         f"of {dataset.root}, or None for all of it")
    if (results / "results").is_dir() and not any((results / name).is_dir() for name in names):
        raise missing("results", results / names[0], f"{RESULTS_LAYOUT}; {results} looks like a run directory of the "
                      f"davis protocol: pass its results folder, {results / 'results'}")
    tracks: list[TrackScore] = []
    for name in tqdm(names, desc="J&F", leave=False, unit="sequence"):
        tracks += score_sequence(name, dataset.annotations(name), results)
    if not tracks:
        raise ValueError(f"no object track to score in {len(names)} sequence(s) of {dataset.root}: every first "
                         "frame is empty")
    result = JFResult(tracks)
    if write:
        write_csvs(result, results, dataset.split)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--davis", required=True, help="the DAVIS folder (ImageSets/, Annotations/, JPEGImages/)")
    parser.add_argument("--results", required=True, help=f"the results folder: {RESULTS_LAYOUT}")
    parser.add_argument("--split", default="val", help="a file name in ImageSets/2017/ (default: val)")
    parser.add_argument("--resolution", default="480p", help="the Annotations/ subfolder (default: 480p)")
    parser.add_argument("--sequences", nargs="*", default=None, help="score only these sequences")
    args = parser.parse_args(argv)
    if args.sequences is not None and (not args.sequences or not all(name.strip() for name in args.sequences)):
        parser.error(f"--sequences needs one or more sequence names (got {args.sequences}); omit it to score the "
                     "whole split")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dataset = DavisDataset(args.davis, args.split, args.resolution,
                           {"root": "--davis", "split": "--split", "resolution": "--resolution"})
    result = evaluate_results(dataset, args.results, args.sequences)
    summary = result.summary()
    print(" | ".join(GLOBAL_COLUMNS))
    print(" | ".join(f"{summary[c]:.3f}" for c in GLOBAL_COLUMNS))
    print(f"{len(result.tracks)} object tracks; CSVs in {args.results}")


if __name__ == "__main__":
    main()
