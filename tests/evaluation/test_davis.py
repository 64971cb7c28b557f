"""The davis protocol end to end on fake DAVIS folders (the real layout): identity features reproduce the ground
truth exactly, kill-and-resume gives the CSVs of one uninterrupted run, mismatched reruns (settings, upsampler,
code, a lost manifest) fail clearly before touching the run folder, a killed regeneration of the synthetic videos is
redone, bad layouts fail clearly, and on the synthetic videos the true field beats bilinear.

``fake_settings(tmp_path)`` is what the protocol contract test runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from evaluation.protocol import evaluate, get_protocol
from evaluation.protocols.synthetic import GroundTruth
from evaluation.synthetic import videos
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.videos import generate_video, write_davis_layout
from evaluation.video.davis import read_label, write_label
from wrc import provenance
from wrc.data.io import read_rgb
from wrc.extractor import DenseFeatureExtractor, build_extractor

COLOURS = np.array([[20, 20, 20], [220, 30, 30], [30, 200, 40], [40, 60, 220]], dtype=np.uint8)


def blob_labels(frame: int, index: int = 0, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Two full-height bands on 4-pixel cells moving right by 4 pixels a frame (sequence ``index`` starts further
    right). No corners: DINO's bilinear upsampling of the soft labels rounds the corners of anything on cells of
    4 pixels, which would keep identity features from reproducing the masks exactly."""
    labels = np.zeros(size, dtype=np.uint8)
    labels[:, 4 + 4 * (frame + index) : 16 + 4 * (frame + index)] = 1
    labels[:, 36 + 4 * frame : 48 + 4 * frame] = 2
    return labels


def fake_davis(root: Path, sequences: tuple[str, ...] = ("blob",), frames: int = 5, split: str = "val") -> Path:
    """The C.5 layout: 64 x 48 JPEG frames coloured by their labels, palette PNG annotations for every frame."""
    for index, name in enumerate(sequences):
        for t in range(frames):
            labels = blob_labels(t, index)
            path = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(COLOURS[labels]).save(path, quality=100, subsampling=0)
            write_label(root / "Annotations" / "480p" / name / f"{t:05d}.png", labels)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(sequences) + "\n")
    return root


def fake_settings(tmp_path: Path) -> dict:
    """One 5-frame sequence, 32 x 32 inputs (2 x 2 tokens of the test ViT, a 4 x 4 grid): the contract test's run."""
    return {"root": str(fake_davis(tmp_path / "davis")), "image_size": 32}


class LabelColours(nn.Module):
    """A backbone whose features are the one-hot of each pixel's nearest label colour (``dense``), averaged per
    patch: with GroundTruth as the upsampler the affinities are exact (1 within an object, 0 across)."""

    def __init__(self, patch_size: int = 8) -> None:
        super().__init__()
        self.register_buffer("colours", torch.from_numpy(COLOURS).float() / 255)
        self.embed_dim, self.patch_size = len(COLOURS), patch_size

    def spec(self) -> dict:
        return {"name": "label_colours", "patch_size": self.patch_size}

    def dense(self, image: torch.Tensor) -> torch.Tensor:
        distance = (image[:, None] - self.colours[None, :, :, None, None]).square().sum(2)
        return F.one_hot(distance.argmin(1), len(COLOURS)).permute(0, 3, 1, 2).float()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.dense(image), self.patch_size)


def identity_extractor() -> DenseFeatureExtractor:
    backbone = LabelColours()
    return DenseFeatureExtractor(backbone, GroundTruth(backbone.embed_dim, backbone.patch_size))


@pytest.mark.parametrize("factor", [2, 4])
def test_identity_features_propagate_the_ground_truth_exactly(tmp_path, factor):
    root = fake_davis(tmp_path / "davis")
    settings = {"root": str(root), "preprocess": "dino", "short_side": 48, "upsample_factor": factor}
    record = evaluate("davis", identity_extractor(), settings, tmp_path / "run")
    assert record.metrics["j_mean"] == record.metrics["f_mean"] == record.metrics["jf_mean"] == 1.0
    assert record.metrics["j_recall"] == 1.0 and record.metrics["j_decay"] == 0.0
    for t in range(5):  # every frame is the annotation itself
        assert np.array_equal(read_label(tmp_path / "run" / "results" / "blob" / f"{t:05d}.png"), blob_labels(t))
    assert record.resolution["processed_size"] == [48, 64] and record.resolution["grid"] == [6 * factor, 8 * factor]


def test_end_to_end_on_the_test_vit_writes_the_official_layout(tmp_path, test_vit):
    settings = fake_settings(tmp_path)
    record = evaluate("davis", build_extractor(test_vit, "bilinear"), settings, tmp_path / "run")
    results = tmp_path / "run" / "results"
    assert sorted(p.name for p in (results / "blob").iterdir()) == [f"{t:05d}.png" for t in range(5)]
    annotation = Path(settings["root"]) / "Annotations" / "480p" / "blob" / "00000.png"
    assert (results / "blob" / "00000.png").read_bytes() == annotation.read_bytes()  # the first frame is copied
    with Image.open(results / "blob" / "00003.png") as image:
        assert image.mode == "P" and image.size == (64, 48) and image.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    assert (results / "global_results-val.csv").read_text().splitlines()[0] == \
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    assert set(record.per_item["per_object"]) == {"blob_1", "blob_2"}
    assert record.dataset == {"name": "davis2017", "split": "val", "root": settings["root"], "sequences": 1}
    assert record.resolution == {"preprocess": "square", "image_size": 32, "upsample_factor": 2, "grid_scale": "2x",
                                 "processed_size": [32, 32], "grid": [4, 4]}
    assert 0 <= record.metrics["jf_mean"] <= 1 and record.metrics["seconds_per_frame"] > 0
    assert record.metrics["jf_mean"] == pytest.approx((record.metrics["j_mean"] + record.metrics["f_mean"]) / 2)


def test_kill_and_resume_gives_the_csvs_of_one_uninterrupted_run(tmp_path, test_vit):
    names = ("blob", "drift", "glide")
    root = fake_davis(tmp_path / "davis", names)
    extractor = build_extractor(test_vit, "bilinear")
    settings = {"root": str(root), "image_size": 32}
    whole = evaluate("davis", extractor, settings, tmp_path / "whole")
    run = tmp_path / "killed"
    assert evaluate("davis", extractor, {**settings, "max_sequences": 1}, run) is None
    assert sorted(p.name for p in (run / "finished").iterdir()) == ["blob.json"]
    half = run / "results" / "drift"  # a sequence killed half-way: PNGs but no marker
    half.mkdir(parents=True)
    (half / "00001.png").write_bytes(b"torn")
    assert evaluate("davis", extractor, {**settings, "max_sequences": 1}, run) is None
    resumed = evaluate("davis", extractor, settings, run)
    for csv in ("global_results-val.csv", "per-sequence_results-val.csv"):
        assert (run / "results" / csv).read_text() == (tmp_path / "whole" / "results" / csv).read_text()
    for name in names:
        for t in range(5):
            frame = f"{name}/{t:05d}.png"
            assert (run / "results" / frame).read_bytes() == (tmp_path / "whole" / "results" / frame).read_bytes()
    assert resumed.metrics | {"seconds_per_frame": 0} == whole.metrics | {"seconds_per_frame": 0}


def test_a_rerun_with_other_settings_or_upsampler_is_refused(tmp_path, test_vit):
    settings = {"root": str(fake_davis(tmp_path / "davis", ("blob", "drift"))), "image_size": 32}
    evaluate("davis", build_extractor(test_vit, "bilinear"), {**settings, "max_sequences": 1}, tmp_path / "run")
    with pytest.raises(ValueError, match=r"another run \(settings.radius: 12 -> 6\).*another run_dir"):
        evaluate("davis", build_extractor(test_vit, "bilinear"), {**settings, "radius": 6}, tmp_path / "run")
    with pytest.raises(ValueError, match="upsampler.name: 'bilinear' -> 'nearest'"):
        evaluate("davis", build_extractor(test_vit, "nearest"), settings, tmp_path / "run")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_with_another_seed_is_refused_before_the_synthetic_videos_are_touched(tmp_path):
    extractor = build_extractor(OracleBackbone(), "bilinear")
    settings = {"dataset": "synthetic", "synthetic_sequences": 1, "image_size": 32}
    evaluate("davis", extractor, settings, tmp_path / "run")
    data = tmp_path / "run" / "synthetic_data"
    before = snapshot(data)
    with pytest.raises(ValueError, match=r"another run \(settings.seed: 0 -> 1\)"):
        evaluate("davis", extractor, {**settings, "seed": 1}, tmp_path / "run")
    assert snapshot(data) == before  # not regenerated with seed 1 (nor deleted) before the refusal


def test_a_killed_regeneration_is_redone_not_taken_for_the_old_videos(tmp_path, monkeypatch):
    root = tmp_path / "synthetic"
    write_davis_layout(root, 2, seed=0)

    def killed_at_the_second_video(seed, size):
        if seed % videos.SEED_STRIDE:
            raise KeyboardInterrupt
        return generate_video(seed, size)

    monkeypatch.setattr(videos, "generate_video", killed_at_the_second_video)
    with pytest.raises(KeyboardInterrupt):
        write_davis_layout(root, 2, seed=1)  # the old folders deleted, seed 1's first video written, then killed
    monkeypatch.undo()
    assert not (root / "complete.json").exists()  # the old marker went first: nothing claims the folder is complete
    write_davis_layout(root, 2, seed=0)
    write_davis_layout(tmp_path / "fresh", 2, seed=0)
    assert snapshot(root) == snapshot(tmp_path / "fresh")  # seed 0's videos again, not seed 1's first one


def test_the_manifest_records_the_code_version_and_commit_but_not_the_dirty_flag(tmp_path, test_vit, monkeypatch):
    settings = {"root": str(fake_davis(tmp_path / "davis", ("blob", "drift"))), "image_size": 32}
    extractor, run = build_extractor(test_vit, "bilinear"), tmp_path / "run"
    code = {"version": "1.2.0", "commit": "abc1234"}
    monkeypatch.setattr(provenance, "code_identity", lambda: dict(code))
    assert evaluate("davis", extractor, {**settings, "max_sequences": 1}, run) is None
    assert json.loads((run / "manifest.json").read_text())["code"] == {"version": "1.2.0", "commit": "abc1234"}
    monkeypatch.setattr(provenance, "code_version", lambda: {**code, "dirty": True})  # an uncommitted edit resumes
    assert evaluate("davis", extractor, settings, run) is not None
    assert sorted(p.name for p in (run / "finished").iterdir()) == ["blob.json", "drift.json"]
    code["commit"] = "def5678"
    with pytest.raises(ValueError, match=r"made by other code \(code.commit: 'abc1234' -> 'def5678'\)"):
        evaluate("davis", extractor, settings, run)
    code.update(commit="abc1234", version="1.3.0")
    with pytest.raises(ValueError, match=r"made by other code \(code.version: '1.2.0' -> '1.3.0'\)"):
        evaluate("davis", extractor, settings, run)


def test_finished_sequences_without_a_manifest_are_refused_not_resumed(tmp_path, test_vit):
    settings = {"root": str(fake_davis(tmp_path / "davis", ("blob", "drift"))), "image_size": 32}
    extractor, run = build_extractor(test_vit, "bilinear"), tmp_path / "run"
    assert evaluate("davis", extractor, {**settings, "max_sequences": 1}, run) is None
    (run / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"1 finished sequence\(s\) \(blob\) but no manifest.json.*delete "
                                         r".*finished to propagate every sequence again"):
        evaluate("davis", extractor, settings, run)
    assert sorted(p.name for p in (run / "finished").iterdir()) == ["blob.json"]  # the refusal wrote nothing
    shutil.rmtree(run / "finished")  # the restart the message offers
    assert evaluate("davis", extractor, settings, run) is not None
    assert (run / "manifest.json").is_file() and len(list((run / "finished").iterdir())) == 2


def test_bad_layouts_and_settings_fail_naming_what_to_pass(tmp_path, test_vit):
    extractor = build_extractor(test_vit, "bilinear")
    root = fake_davis(tmp_path / "davis", ("blob", "drift"))
    run = lambda **s: evaluate("davis", extractor, {"root": str(root), "image_size": 32, **s}, tmp_path / "run")  # noqa: E731
    with pytest.raises(ValueError, match="protocol.root is not set: pass protocol.root="):
        evaluate("davis", extractor, {}, tmp_path / "none")
    with pytest.raises(FileNotFoundError, match=r"protocol.split: .*ImageSets/2017/test.txt not found"):
        run(split="test")
    assert not (tmp_path / "run" / "manifest.json").exists()  # a failed start leaves no manifest to mismatch later
    with pytest.raises(ValueError, match=r"protocol.sequences: \['nope'\] are not in val.txt"):
        run(sequences=["nope"])
    (root / "Annotations" / "480p" / "drift" / "00000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"drift/00000.png not found.*no annotation of its first frame"):
        run(sequences=["drift"])
    for frame in (root / "JPEGImages" / "480p" / "blob").iterdir():
        frame.unlink()
    with pytest.raises(FileNotFoundError, match=r"protocol.root: .*480p/blob/00000.jpg not found.*no frames"):
        run(sequences=["blob"])
    for bad in ({"preprocess": "crop"}, {"upsample_factor": 3}, {"dataset": "davis2016"}, {"max_sequences": 0},
                {"temperature": 0}):
        with pytest.raises(ValueError, match=f"protocol.{next(iter(bad))}"):
            get_protocol("davis").settings(bad)


def test_synthetic_videos_keep_their_classes_through_jpeg_and_their_masks_exactly(tmp_path):
    root = tmp_path / "synthetic"
    names = write_davis_layout(root, 2, seed=0)
    oracle = OracleBackbone()
    for index, name in enumerate(names):
        video = generate_video(index)
        frames = sorted((root / "JPEGImages" / "480p" / name).iterdir())
        assert 6 <= len(frames) <= 8 and 2 <= int(video.masks.max()) <= 3
        for t, frame in enumerate(frames):
            decoded = oracle.class_probabilities(read_rgb(frame)[None]).argmax(1)[0]
            assert (decoded == video.classes[t]).float().mean() >= 0.98
            annotation = read_label(root / "Annotations" / "480p" / name / f"{t:05d}.png")
            assert np.array_equal(annotation, video.masks[t].numpy())
        moved = [(video.masks[0] == k) ^ (video.masks[-1] == k) for k in range(1, int(video.masks.max()) + 1)]
        assert all(m.any() for m in moved)  # every shape moves or deforms
    assert (root / "ImageSets" / "2017" / "val.txt").read_text().split() == names
    stamp = (root / "complete.json").stat().st_mtime_ns
    assert write_davis_layout(root, 2, seed=0) == names and (root / "complete.json").stat().st_mtime_ns == stamp


def test_on_synthetic_videos_the_true_field_beats_bilinear(tmp_path):
    protocol = get_protocol("davis")
    settings = protocol.settings({"dataset": "synthetic", "image_size": 128, "synthetic_sequences": 2})
    oracle = protocol.make_backbone(settings)
    assert isinstance(oracle, OracleBackbone) and protocol.make_backbone(protocol.settings({})) is None
    scores = {}
    for name, extractor in (("bilinear", build_extractor(oracle, "bilinear")),
                            ("ground_truth", DenseFeatureExtractor(oracle, GroundTruth(oracle.embed_dim, 8)))):
        record = evaluate(protocol, extractor, settings, tmp_path / name)
        assert record.dataset == {"name": "synthetic_videos", "split": "val", "root": None, "sequences": 2}
        scores[name] = record.metrics["jf_mean"]
    assert scores["ground_truth"] > scores["bilinear"] + 0.04, scores
