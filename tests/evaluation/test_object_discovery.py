"""The object_discovery protocol end to end on fake VOC07 / VOC12 / COCO20k layouts (tiny test ViT, bilinear), the
frames of both preprocessings, resume after a kill, and the synthetic task (generator, JPEG fidelity, the oracle)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evaluation.protocol import evaluate, get_protocol
from evaluation.protocols import object_discovery, salient
from evaluation.protocols.synthetic import GroundTruth
from evaluation.synthetic import discovery
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.scenes import CLASSES
from evaluation.tokencut import datasets, metrics
from tests.evaluation.test_tokencut import fake_coco, fake_ecssd, fake_voc, save_image
from wrc import provenance
from wrc.data.io import read_rgb
from wrc.extractor import DenseFeatureExtractor, build_extractor
from wrc.settings import SettingsError


def fake_settings_object_discovery(tmp_path) -> dict:
    """D.4's fake VOC07 (one 64 x 48 image, two objects) at a 64-pixel square frame."""
    return {"dataset": "voc07", "root": str(fake_voc(tmp_path / "datasets")), "image_size": 64}


fake_settings = fake_settings_object_discovery


class BrightnessBackbone(nn.Module):
    """A frozen stand-in whose patch features say how bright the patch is: dark and bright patches have opposite
    features, so the cut of a bright rectangle on a dark image is the rectangle."""

    def __init__(self, patch_size: int = 16, mean: float = 0.0) -> None:
        super().__init__()
        self.embed_dim, self.patch_size = 3, patch_size
        self.register_buffer("mean", torch.full((1, 3, 1, 1), mean))  # the colour preprocess=pad pads with

    def spec(self) -> dict:
        return {"name": "brightness", "patch_size": self.patch_size}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        v = F.avg_pool2d(image.mean(dim=1, keepdim=True), self.patch_size) - 0.5
        return torch.cat([v, -v, torch.full_like(v, 0.05)], dim=1)


def predictions(run_dir) -> dict:
    return json.loads((run_dir / "predictions.json").read_text())["images"]


@pytest.mark.parametrize("dataset", ["voc07", "voc12", "coco20k"])
def test_end_to_end_on_the_fake_layouts(tmp_path, test_vit, dataset):
    root = {"voc07": lambda: fake_voc(tmp_path), "voc12": lambda: fake_voc(tmp_path, "2012"),
            "coco20k": lambda: fake_coco(tmp_path)}[dataset]()
    settings = {"dataset": dataset, "root": str(root), "image_size": 64}
    record = evaluate("object_discovery", build_extractor(test_vit, "bilinear"), settings, tmp_path / "run")
    assert 0 <= record.metrics["corloc"] <= 1 and record.metrics["images"] == 1.0
    assert record.dataset["name"] == dataset and record.resolution["tau"] == (0.3 if dataset == "coco20k" else 0.2)
    (result,) = predictions(tmp_path / "run").values()
    assert result["grid"] == [8, 8] and result["size"] == [48, 64]  # 2 x the 4 x 4 token grid of 64 x 64
    x1, y1, x2, y2 = result["box"]
    assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and x1 % 8 == 0 and y1 % 8 == 0  # whole 8-pixel cells
    # the ground truth rescaled to the 64 x 64 frame (y by 64 / 48) and truncated, as LiFT does
    expected = [[8, 10, 40, 42], [0, 0, 8, 8]] if dataset != "coco20k" else [[8, 10, 32, 32]]
    assert result["ground_truth"] == expected


@pytest.mark.parametrize("preprocess", ["square", "pad"])
def test_a_clear_object_is_localised_in_either_frame(tmp_path, preprocess):
    root = fake_voc(tmp_path)
    extractor = build_extractor(BrightnessBackbone(), "bilinear")
    settings = {"dataset": "voc07", "root": str(root), "image_size": 64, "preprocess": preprocess}
    record = evaluate("object_discovery", extractor, settings, tmp_path / "run")
    (result,) = predictions(tmp_path / "run").values()
    assert record.metrics["corloc"] == 1.0 and result["iou"] >= 0.5
    if preprocess == "pad":  # original pixels: the VOC boxes as stored, minus one on xmin and ymin
        assert result["ground_truth"] == [[8, 8, 40, 32], [0, 0, 8, 6]] and result["grid"] == [6, 8]


@pytest.mark.parametrize("preprocess, tau", [("square", 0.3), ("pad", 0.2)])
def test_coco20k_tau_is_lifts_when_square_and_tokencuts_when_padded(tmp_path, preprocess, tau):
    """Reference D.2: LiFT/WRC (square frame) cut COCO20k at 0.3; D.1: TokenCut (padded originals) at its 0.2."""
    settings = {"dataset": "coco20k", "root": str(fake_coco(tmp_path)), "image_size": 64, "preprocess": preprocess}
    record = evaluate("object_discovery", build_extractor(BrightnessBackbone(), "bilinear"), settings,
                      tmp_path / "run")
    assert record.resolution["tau"] == tau
    assert get_protocol("object_discovery").settings({"dataset": "voc07", "preprocess": preprocess}).tau is None


def test_correct_follows_the_shared_corloc_threshold(tmp_path, monkeypatch):
    """The clear object has IoU in [0.5, 1) with its box: correct at metrics.CORLOC_IOU = 0.5, and a miss once the
    shared threshold is raised above 1 (no literal 0.5 in the protocol)."""
    settings = {"dataset": "voc07", "root": str(fake_voc(tmp_path)), "image_size": 64}
    extractor = build_extractor(BrightnessBackbone(), "bilinear")
    assert evaluate("object_discovery", extractor, settings, tmp_path / "a").metrics["corloc"] == 1.0
    monkeypatch.setattr(metrics, "CORLOC_IOU", 1.01)
    assert evaluate("object_discovery", extractor, settings, tmp_path / "b").metrics["corloc"] == 0.0
    (result,) = predictions(tmp_path / "b").values()
    assert 0.5 <= result["iou"] < 1.0 and result["correct"] is False


def test_pad_keeps_original_pixels_and_clips_the_box(tmp_path):
    root = fake_voc(tmp_path)
    image = root / "VOC2007" / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.jpg"
    save_image(image, height=40, width=50, box=(34, 26, 50, 40))  # the object reaches the bottom-right corner
    extractor = build_extractor(BrightnessBackbone(mean=1.0), "bilinear")  # white padding: part of the object
    settings = {"dataset": "voc07", "root": str(root), "preprocess": "pad"}
    evaluate("object_discovery", extractor, settings, tmp_path / "run")
    (result,) = predictions(tmp_path / "run").values()
    assert result["grid"] == [6, 8] and result["size"] == [40, 50]  # padded to 48 x 64, cells of 8 pixels
    assert result["box"][2] == 50 and result["box"][3] == 40  # clipped to the image, not the padding
    colour = torch.tensor([0.1, 0.2, 0.3])
    frame = object_discovery.pad_frame(read_rgb(image), 16, colour)
    assert frame.shape == (3, 48, 64) and torch.equal(frame[:, 40:, :], colour[:, None, None].expand(3, 8, 64))
    assert torch.equal(frame[:, :40, :50], read_rgb(image))


def test_no_hard_drops_hard_objects_then_images_without_objects(tmp_path):
    """000001: a truncated dog (hard) and an easy cat -> only the cat's box is left; 000002: both difficult too ->
    no objects left, the image is skipped (TokenCut's --no_hard)."""
    root = fake_voc(tmp_path, ids=("000001", "000002"))
    base = root / "VOC2007" / "VOCdevkit" / "VOC2007" / "Annotations"
    base.joinpath("000002.xml").write_text(base.joinpath("000002.xml").read_text().replace(
        "<difficult>0</difficult>", "<difficult>1</difficult>"))
    protocol = get_protocol("object_discovery")
    settings = protocol.settings({"dataset": "voc07", "root": str(root), "no_hard": True, "image_size": 64})
    (item,) = protocol.listing(settings, tmp_path).items
    assert item.name == "000001" and item.classes == ["cat"]
    np.testing.assert_array_equal(item.boxes, [[0, 0, 8, 6]])
    record = evaluate(protocol, build_extractor(BrightnessBackbone(), "bilinear"), settings, tmp_path / "run")
    (result,) = predictions(tmp_path / "run").values()
    assert result["ground_truth"] == [[0, 0, 8, 8]] and record.metrics["images"] == 1.0  # y scaled by 64 / 48
    settings = protocol.settings({"dataset": "voc07", "root": str(root), "max_images": 1})
    (item,) = protocol.listing(settings, tmp_path).items
    assert item.boxes.shape == (2, 4)  # without no_hard every object stays


def test_a_killed_run_resumes_with_the_images_it_has_not_done(tmp_path, test_vit, monkeypatch):
    root = fake_voc(tmp_path, ids=("000001", "000002", "000003"))
    settings = {"dataset": "voc07", "root": str(root), "image_size": 32}
    extractor = build_extractor(test_vit, "bilinear")
    complete = evaluate("object_discovery", extractor, settings, tmp_path / "complete")
    monkeypatch.setattr(object_discovery, "SAVE_EVERY_IMAGES", 1)
    real, calls = object_discovery.discover, []

    def dies_after_two(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a kill between two images leaves behind
        calls.append(args[1].name)
        return real(*args)

    monkeypatch.setattr(object_discovery, "discover", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        evaluate("object_discovery", extractor, settings, tmp_path / "run")
    assert sorted(predictions(tmp_path / "run")) == ["000001", "000002"]
    calls.clear()
    monkeypatch.setattr(object_discovery, "discover", lambda *args: calls.append(args[1].name) or real(*args))
    record = evaluate("object_discovery", extractor, settings, tmp_path / "run")
    assert calls == ["000003"] and record.metrics["corloc"] == complete.metrics["corloc"]
    assert predictions(tmp_path / "run") == predictions(tmp_path / "complete")
    with pytest.raises(ValueError, match=r"holds predictions of another run \(settings.tau: None -> 0.5\)"):
        evaluate("object_discovery", extractor, {**settings, "tau": 0.5}, tmp_path / "run")


@pytest.mark.parametrize("protocol", ["object_discovery", "salient"])
def test_predictions_of_other_code_are_not_resumed(tmp_path, monkeypatch, protocol):
    """A run stopped under one commit (or predictions version) refuses to resume under another, and says so; an
    uncommitted edit (the dirty flag) alone does not."""
    monkeypatch.setattr(provenance, "code_identity", lambda: {"version": "9.9", "commit": "aaaaaaa"})
    extractor = build_extractor(BrightnessBackbone(patch_size=8), "bilinear")
    root = fake_voc(tmp_path, ids=("000001", "000002")) if protocol == "object_discovery" else None
    settings = ({"dataset": "voc07", "root": str(root), "image_size": 32, "stop_after": 1} if root else
                {"dataset": "ecssd", "root": str(fake_ecssd(tmp_path, ("0001", "0002"))), "stop_after": 1})
    assert evaluate(protocol, extractor, settings, tmp_path / "run") is None
    saved = json.loads((tmp_path / "run" / "predictions.json").read_text())["identity"]
    assert saved["code"] == {"version": "9.9", "commit": "aaaaaaa"} and saved["predictions_version"] == 1
    monkeypatch.setattr(provenance, "code_identity", lambda: {"version": "9.9", "commit": "bbbbbbb"})
    with pytest.raises(ValueError, match=r"holds predictions made by other code \(code.commit: 'aaaaaaa' -> "
                                         r"'bbbbbbb'\): results of two code versions are not mixed"):
        evaluate(protocol, extractor, settings, tmp_path / "run")
    monkeypatch.setattr(provenance, "code_identity", lambda: {"version": "9.9", "commit": "aaaaaaa"})
    monkeypatch.setattr(provenance, "code_version", lambda: {"version": "9.9", "commit": "aaaaaaa", "dirty": True})
    module = object_discovery if protocol == "object_discovery" else salient
    monkeypatch.setattr(module, "PREDICTIONS_VERSION", 2)
    with pytest.raises(ValueError, match=r"made by other code \(predictions_version: 1 -> 2\)"):
        evaluate(protocol, extractor, settings, tmp_path / "run")
    monkeypatch.setattr(module, "PREDICTIONS_VERSION", 1)  # the dirty flag alone: resumed and finished
    assert evaluate(protocol, extractor, settings, tmp_path / "run").metrics["images"] == 2.0


def test_stop_after_stops_and_the_same_call_resumes(tmp_path, test_vit):
    root = fake_voc(tmp_path, ids=("000001", "000002"))
    settings = {"dataset": "voc07", "root": str(root), "image_size": 32, "stop_after": 1}
    extractor = build_extractor(test_vit, "bilinear")
    assert evaluate("object_discovery", extractor, settings, tmp_path / "run") is None
    assert len(predictions(tmp_path / "run")) == 1 and not (tmp_path / "run" / "result.json").exists()
    record = evaluate("object_discovery", extractor, settings, tmp_path / "run")
    assert record.metrics["images"] == 2.0 and "seconds_per_image" in record.metrics


def test_bad_settings_are_refused_with_the_key_named(tmp_path, test_vit):
    protocol = get_protocol("object_discovery")
    for bad, message in [({"dataset": "voc2012"}, "protocol.dataset='voc2012'; expected one of"),
                         ({"preprocess": "crop"}, "protocol.preprocess='crop'; expected one of"),
                         ({"solver": "arpack"}, "protocol.solver='arpack'; expected one of"),
                         ({"upsample_factor": 0}, "protocol.upsample_factor must be >= 1"),
                         ({"eps": 0.0}, "protocol.eps must be > 0")]:
        with pytest.raises(SettingsError, match=message):
            protocol.settings(bad)
    settings = {"dataset": "voc07", "root": str(fake_voc(tmp_path)), "image_size": 40}
    with pytest.raises(ValueError, match="protocol.image_size=40 must be a multiple of the backbone's patch size 16"):
        evaluate("object_discovery", build_extractor(test_vit, "bilinear"), settings, tmp_path / "run")
    with pytest.raises(ValueError, match="protocol.root is not set"):
        evaluate("object_discovery", build_extractor(test_vit, "bilinear"), {"dataset": "voc07"}, tmp_path / "r")


def test_synthetic_scenes_are_one_salient_object_on_clutter():
    for seed in range(4):
        scene = discovery.generate_discovery_scene(seed)
        assert scene.image.shape == (3, discovery.HEIGHT, discovery.WIDTH)
        assert 0.15 <= scene.mask.float().mean() <= 0.40
        assert (scene.classes[scene.mask] == scene.object_class).all()
        background = np.unique(scene.classes[~scene.mask].numpy()).tolist()  # numpy: torch.unique is slow here
        assert scene.object_class not in background and len(background) >= 1  # the object's class is its own
    again = discovery.generate_discovery_scene(3)
    assert torch.equal(again.image, scene.image) and torch.equal(again.mask, scene.mask)


def test_synthetic_files_decode_as_generated_and_carry_the_exact_ground_truth(tmp_path):
    root = discovery.write_discovery_dataset(tmp_path, num_images=2, seed=5)
    oracle = OracleBackbone()
    listing = datasets.voc(root, "voc07")
    for index, item in enumerate(listing.items):
        scene = discovery.generate_discovery_scene(5 + index)
        decoded = oracle.class_probabilities(read_rgb(item.image)[None]).argmax(dim=1)[0]
        assert (decoded == scene.classes).float().mean() >= 0.98  # JPEG quality 100, no chroma subsampling
        np.testing.assert_array_equal(item.boxes, [scene.box])  # the XML's 1-based box, read back 0-based
        assert item.classes == [CLASSES[scene.object_class]]
        mask = datasets.read_mask(root / "ECSSD" / "gt" / f"{item.name}.png")
        assert np.array_equal(mask, scene.mask.numpy())
    stamp = (root / discovery.MANIFEST).stat().st_mtime_ns
    discovery.write_discovery_dataset(tmp_path, num_images=2, seed=5)  # complete: reused
    assert (root / discovery.MANIFEST).stat().st_mtime_ns == stamp


def test_synthetic_task_runs_on_the_oracle_and_ground_truth_localises(tmp_path):
    protocol = get_protocol("object_discovery")
    settings = protocol.settings({"dataset": "synthetic", "synthetic_images": 1})
    oracle = protocol.make_backbone(settings)
    assert isinstance(oracle, OracleBackbone)
    truth = DenseFeatureExtractor(oracle, GroundTruth(oracle.embed_dim, oracle.patch_size)).eval()
    record = evaluate(protocol, truth, settings, tmp_path / "run")
    assert record.metrics["corloc"] == 1.0 and record.dataset["name"] == "synthetic_objects"
    assert (tmp_path / "run" / "synthetic_data" / "VOC2007" / "VOCdevkit" / "VOC2007" / "Annotations").is_dir()
    assert record.resolution["grid_first_image"] == [56, 56]  # 2 x the oracle's 28 x 28 tokens at 224
