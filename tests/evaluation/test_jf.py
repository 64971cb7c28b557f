"""J&F against hand-computed cases, the official special cases, statistics and CSVs, and the scorer's errors."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from evaluation.video.davis import DavisDataset, read_label, write_label
from evaluation.video.jf import (
    TrackScore,
    boundary_tolerance,
    decay_bins,
    disk,
    evaluate_results,
    f_measure,
    jaccard,
    main,
    seg2bmap,
)
from tests.evaluation.test_davis import fake_davis


def square(top: int, left: int, side: int = 3, size: int = 6) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def pixels(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(int(y), int(x)) for y, x in np.argwhere(mask)}


def test_hand_computed_6x6_pair():
    truth, prediction = square(1, 1), square(2, 2)  # 9 pixels each, 4 shared, union 14
    assert jaccard(prediction, truth) == pytest.approx(4 / 14)
    # seg2bmap: the pixels differing from their east, south or south-east neighbour: the outer ring above and left
    # of the square, the inner ring of its last row and column
    assert pixels(seg2bmap(truth)) == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 0), (3, 0),
                                       (3, 1), (3, 2), (3, 3), (1, 3), (2, 3)}
    assert pixels(seg2bmap(prediction)) == {(y + 1, x + 1) for y, x in pixels(seg2bmap(truth))}
    # tolerance ceil(0.008 * 8.49) = 1, a plus-shaped disk: one boundary pixel of each is off by a diagonal,
    # (4, 4) of the prediction and (0, 0) of the truth: precision = recall = 11 / 12
    assert boundary_tolerance((6, 6)) == 1
    assert f_measure(prediction, truth) == pytest.approx(11 / 12)


def test_seg2bmap_last_row_and_column_rules():
    mask = np.zeros((4, 4), dtype=bool)
    mask[2:, 2:] = True  # touches the bottom and right borders
    # rows 0-2 as usual; the last row compares east only, the last column south only, the corner never counts
    assert pixels(seg2bmap(mask)) == {(1, 1), (1, 2), (1, 3), (2, 1), (3, 1)}
    assert not seg2bmap(np.ones((3, 3))).any() and not seg2bmap(np.zeros((3, 3))).any()


def test_special_cases():
    empty, blob = np.zeros((6, 6), bool), square(1, 1)
    assert jaccard(empty, empty) == 1.0 and f_measure(empty, empty) == 1.0  # neither: P = R = 1
    assert jaccard(empty, blob) == 0.0 and f_measure(empty, blob) == 0.0  # no predicted boundary: P = 1, R = 0
    assert f_measure(blob, empty) == 0.0  # no true boundary: P = 0, R = 1
    assert jaccard(blob, blob) == 1.0 and f_measure(blob, blob) == 1.0
    # a far second square: its 8 boundary pixels (3 inner, 5 outer) are unmatched, the 3 of the first (at the image
    # corner: inner ring only) match -> precision 3 / 11, recall 1, F = 2 (3 / 11) / (14 / 11) = 3 / 7
    far = square(0, 0, 2, 40) | square(30, 30, 2, 40)
    assert f_measure(far, square(0, 0, 2, 40)) == pytest.approx(3 / 7)


def test_disk_footprint_and_tolerance():
    assert disk(1).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).astype(int).tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0],
                                            [0, 0, 1, 0, 0]]
    assert boundary_tolerance((480, 854)) == 8 and boundary_tolerance((48, 64)) == 1


def test_statistics_mean_recall_and_decay_over_four_linspace_bins():
    # 10 frames: edges round(linspace(1, 10, 5)) - 1 = 0, 2, 5, 7, 9 -> bins [0:3], [2:6], [5:8], [7:10]
    assert decay_bins(10) == [slice(0, 3), slice(2, 6), slice(5, 8), slice(7, 10)]
    mean, recall, decay = TrackScore.statistics(np.arange(10) / 10)
    assert mean == pytest.approx(0.45) and recall == pytest.approx(0.4)  # 0.6 .. 0.9 are > 0.5, 0.5 is not
    assert decay == pytest.approx(0.1 - 0.8)
    assert decay_bins(3) == [slice(0, 2), slice(1, 2), slice(1, 3), slice(2, 3)]  # 1.5 rounds up


def copy_annotations(root, results, sequences=("blob",)):
    for name in sequences:
        shutil.copytree(root / "Annotations" / "480p" / name, results / name)


def test_ground_truth_as_results_scores_one_and_an_empty_prediction_zero(tmp_path):
    root = fake_davis(tmp_path / "davis")
    dataset = DavisDataset(root)
    copy_annotations(root, tmp_path / "perfect")
    summary = evaluate_results(dataset, tmp_path / "perfect").summary()
    assert summary == {"J&F-Mean": 1.0, "J-Mean": 1.0, "J-Recall": 1.0, "J-Decay": 0.0, "F-Mean": 1.0,
                       "F-Recall": 1.0, "F-Decay": 0.0}
    for t in range(5):
        write_label(tmp_path / "empty" / "blob" / f"{t:05d}.png", np.zeros((48, 64), np.uint8))
    empty = evaluate_results(dataset, tmp_path / "empty")
    assert empty.summary()["J-Mean"] == 0.0 and empty.summary()["F-Mean"] == 0.0
    assert [len(t.j) for t in empty.tracks] == [3, 3]  # frames 1..N-2 of 5


def test_global_means_are_over_object_tracks_and_the_csvs_are_official(tmp_path, caplog):
    root = fake_davis(tmp_path / "davis", ("blob", "solo"))
    for t in range(5):  # "solo" keeps only its first object
        path = root / "Annotations" / "480p" / "solo" / f"{t:05d}.png"
        write_label(path, np.where(read_label(path) == 2, 0, read_label(path)))
    results = tmp_path / "results"
    copy_annotations(root, results, ("blob", "solo"))
    for t in range(5):  # blob_2 is never found: tracks blob_1 = 1, blob_2 = 0, solo_1 = 1
        path = results / "blob" / f"{t:05d}.png"
        write_label(path, np.where(read_label(path) == 2, 0, read_label(path)))
    (results / "global_results-val.csv").write_text("J&F-Mean\n0.999\n")  # stale: must not be re-used
    with caplog.at_level(logging.INFO, logger="wrc"):
        result = evaluate_results(DavisDataset(root), results)
    assert "replacing" in caplog.text and "global_results-val.csv" in caplog.text
    assert result.summary()["J-Mean"] == pytest.approx(2 / 3)  # per sequence it would be (0.5 + 1) / 2
    assert (results / "global_results-val.csv").read_text() == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n0.667,0.667,0.667,0.000,0.667,0.667,0.000\n")
    assert (results / "per-sequence_results-val.csv").read_text() == (
        "Sequence,J-Mean,F-Mean\nblob_1,1.000,1.000\nblob_2,0.000,0.000\nsolo_1,1.000,1.000\n")
    assert result.per_object() == {"blob_1": {"j_mean": 1.0, "f_mean": 1.0}, "blob_2": {"j_mean": 0.0, "f_mean": 0.0},
                                   "solo_1": {"j_mean": 1.0, "f_mean": 1.0}}


def test_scoring_errors_name_the_file_and_what_is_wrong(tmp_path):
    root = fake_davis(tmp_path / "davis")
    dataset = DavisDataset(root)
    results = tmp_path / "results"
    copy_annotations(root, results)
    write_label(results / "blob" / "00002.png", np.full((48, 64), 3, np.uint8))
    with pytest.raises(ValueError, match=r"00002.png: sequence 'blob', frame 00002: result ids \[3\] are above the "
                                         r"2 object\(s\) of the ground truth"):
        evaluate_results(dataset, results)
    (results / "blob" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"results: .*blob/00002.png not found.*no result for frame 00002"):
        evaluate_results(dataset, results)
    with pytest.raises(FileNotFoundError, match="results: .*nowhere not found"):
        evaluate_results(dataset, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"protocol.split: .*ImageSets/2017/test.txt not found"):
        DavisDataset(root, "test")


def test_the_command_line_scores_any_results_folder(tmp_path, capsys):
    root = fake_davis(tmp_path / "davis")
    copy_annotations(root, tmp_path / "results")
    main(["--davis", str(root), "--results", str(tmp_path / "results")])
    assert "1.000 | 1.000" in capsys.readouterr().out
    assert (tmp_path / "results" / "per-sequence_results-val.csv").is_file()


def test_a_sequence_whose_first_frame_holds_no_object_adds_no_track(tmp_path, caplog):
    """As the official evaluation: objects are the ids of the first frame, so an empty first frame gives no track
    (later objects are ignored), while its results are still read and checked."""
    root = fake_davis(tmp_path / "davis", ("blob", "empty"))
    write_label(root / "Annotations" / "480p" / "empty" / "00000.png", np.zeros((48, 64), np.uint8))
    results = tmp_path / "results"
    copy_annotations(root, results, ("blob",))
    for t in range(5):  # blob_2 is never found: blob_1 scores J = F = 1, blob_2 J = F = 0
        path = results / "blob" / f"{t:05d}.png"
        write_label(path, np.where(read_label(path) == 2, 0, read_label(path)))
        write_label(results / "empty" / f"{t:05d}.png", np.zeros((48, 64), np.uint8))
    dataset = DavisDataset(root)
    with caplog.at_level(logging.WARNING, logger="wrc"):
        result = evaluate_results(dataset, results)
    assert "sequence empty" in caplog.text and "holds no object" in caplog.text
    assert [t.name for t in result.tracks] == ["blob_1", "blob_2"]
    assert result.summary() == {"J&F-Mean": 0.5, "J-Mean": 0.5, "J-Recall": 0.5, "J-Decay": 0.0, "F-Mean": 0.5,
                                "F-Recall": 0.5, "F-Decay": 0.0}
    assert (results / "per-sequence_results-val.csv").read_text() == (
        "Sequence,J-Mean,F-Mean\nblob_1,1.000,1.000\nblob_2,0.000,0.000\n")
    with pytest.raises(ValueError, match="no object track to score in 1 sequence"):
        evaluate_results(dataset, results, ["empty"])
    write_label(results / "empty" / "00002.png", np.ones((48, 64), np.uint8))
    with pytest.raises(ValueError, match=r"frame 00002: result ids \[1\] are above the 0 object\(s\)"):
        evaluate_results(dataset, results)


def test_an_empty_list_of_sequences_is_refused_clearly(tmp_path, capsys):
    root = fake_davis(tmp_path / "davis")
    copy_annotations(root, tmp_path / "results")
    arguments = ["--davis", str(root), "--results", str(tmp_path / "results")]
    with pytest.raises(SystemExit):
        main([*arguments, "--sequences"])
    assert "--sequences needs one or more sequence names" in capsys.readouterr().err
    (tmp_path / "run" / "results").mkdir(parents=True)  # a run directory: the branch that read names[0]
    for folder in ("results", "run"):
        with pytest.raises(ValueError, match="no sequence to score: the list of sequences is empty"):
            evaluate_results(DavisDataset(root), tmp_path / folder, [])
    main([*arguments, "--sequences", "blob"])
    assert "1.000 | 1.000" in capsys.readouterr().out
