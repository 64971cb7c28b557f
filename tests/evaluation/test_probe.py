"""Linear probes end to end on fake datasets with a random-init tiny ViT, the cached path, resume and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.protocol import evaluate
from evaluation.records import read_record
from tests.helpers.fake_datasets import save_label, save_rgb
from wrc.extractor import build_extractor


def fake_voc(root, ids=("a", "b", "c"), values=(0, 1, 15, 255)):
    base = root / "VOCdevkit" / "VOC2012"
    for i in ids:
        save_rgb(base / "JPEGImages" / f"{i}.jpg", 40, 48)
        save_label(base / "SegmentationClass" / f"{i}.png", list(values), 40, 48, palette=True)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def fake_nyu(root):
    for split in ("train", "test"):
        for i in range(2):
            save_rgb(root / split / "images" / f"{i:05d}.png", 40, 48)
            depth = np.random.default_rng(i).integers(500, 9000, (40, 48)).astype(np.uint16)
            (root / split / "depths").mkdir(parents=True, exist_ok=True)
            Image.fromarray(depth).save(root / split / "depths" / f"{i:05d}.png")
    return root


def voc_settings(root, **settings):
    dataset = {"name": "voc2012", "root": str(root), "train_split": "train", "val_split": "val", "size": 32}
    return {"dataset": dataset, "epochs": 2, "batch_size": 2, **settings}


def nyu_settings(root, **settings):
    dataset = {"name": "nyuv2", "root": str(root), "train_split": "train", "val_split": "test", "size": 32}
    return {"dataset": dataset, "epochs": 2, "batch_size": 2, **settings}


@pytest.fixture
def bilinear(test_vit):
    return build_extractor(test_vit, "bilinear")


def probe(extractor, run_dir, settings, protocol="probe_segmentation"):
    return evaluate(protocol, extractor, settings, run_dir)


def test_segmentation_probe_end_to_end(tmp_path, bilinear):
    record = probe(bilinear, tmp_path / "run", voc_settings(fake_voc(tmp_path / "voc")))
    saved = read_record(tmp_path / "run" / "result.json")
    assert saved.metrics["miou"] == record.metrics["miou"] and 0 <= record.metrics["miou"] <= 1
    assert len(saved.per_item["per_class_iou"]) == 21 and saved.dataset["name"] == "voc2012"
    assert saved.dataset["split"] == "val" and saved.upsampler["name"] == "bilinear" and saved.config["epochs"] == 2
    assert (tmp_path / "run" / "probe.pt").exists() and (tmp_path / "run" / "predictions.png").exists()


def test_cached_features_reproduce_the_online_path(tmp_path, bilinear):
    root = fake_voc(tmp_path / "voc")
    online = probe(bilinear, tmp_path / "online", voc_settings(root))
    cached = probe(bilinear, tmp_path / "cached", voc_settings(root, cache_features=True, cache_dtype="float32"))
    weights = [torch.load(tmp_path / name / "probe.pt")["head"]["weight"] for name in ("online", "cached")]
    torch.testing.assert_close(weights[0], weights[1])
    assert online.metrics == cached.metrics
    half = probe(bilinear, tmp_path / "half", voc_settings(root, cache_features=True))
    torch.testing.assert_close(torch.load(tmp_path / "half" / "probe.pt")["head"]["weight"], weights[0],
                               rtol=1e-2, atol=1e-3)
    assert np.load(tmp_path / "half" / "train_features.npy", mmap_mode="r").dtype == np.float16
    assert half.metrics["valid_pixels"] == online.metrics["valid_pixels"]


def test_lowres_protocol_trains_on_the_token_grid(tmp_path, bilinear):
    record = probe(bilinear, tmp_path / "run", voc_settings(fake_voc(tmp_path / "voc"), mode="lowres"))
    assert record.config["mode"] == "lowres" and 0 <= record.metrics["miou"] <= 1


def test_a_killed_probe_resumes_from_its_last_epoch(tmp_path, bilinear):
    root = fake_voc(tmp_path / "voc")
    full = probe(bilinear, tmp_path / "full", voc_settings(root, epochs=3))
    cut = probe(bilinear, tmp_path / "cut", voc_settings(root, epochs=3, stop_after_epoch=1))  # as if killed
    assert cut is None and not (tmp_path / "cut" / "result.json").exists()
    assert torch.load(tmp_path / "cut" / "probe_state.pt", weights_only=False)["epoch"] == 1
    resumed = probe(bilinear, tmp_path / "cut", voc_settings(root, epochs=3))
    weights = [torch.load(tmp_path / name / "probe.pt")["head"]["weight"] for name in ("full", "cut")]
    torch.testing.assert_close(weights[0], weights[1])
    assert resumed.metrics == full.metrics


def test_depth_probe_end_to_end(tmp_path, bilinear):
    metrics = probe(bilinear, tmp_path / "run", nyu_settings(fake_nyu(tmp_path / "nyu")), "probe_depth").metrics
    assert {"d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"} <= set(metrics)
    assert 0 < metrics["rmse"] < 10 and metrics["images"] == 2


def test_labels_out_of_range_are_a_clear_error(tmp_path, bilinear):
    root = fake_voc(tmp_path / "voc", values=(0, 30))
    with pytest.raises(ValueError, match=r"labels out of range: expected 0..20"):
        probe(bilinear, tmp_path / "run", voc_settings(root))


def test_missing_split_unset_root_and_wrong_task(tmp_path, bilinear):
    settings = voc_settings(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="expected the layout VOCdevkit/VOC2012"):
        probe(bilinear, tmp_path / "run", settings)
    settings["dataset"]["root"] = None
    with pytest.raises(ValueError, match="dataset.root is not set"):
        probe(bilinear, tmp_path / "run", settings)
    with pytest.raises(ValueError, match="protocol=probe_segmentation needs a segmentation dataset: pass dataset="):
        probe(bilinear, tmp_path / "run", {"epochs": 1})
    with pytest.raises(ValueError, match="needs a depth dataset; dataset=voc2012 is a segmentation dataset"):
        probe(bilinear, tmp_path / "run", voc_settings(fake_voc(tmp_path / "voc")), "probe_depth")


def test_unknown_and_bad_settings_name_the_key(tmp_path, bilinear):
    with pytest.raises(ValueError, match=r"unknown setting protocol.epoch \(did you mean protocol.epochs\?\)"):
        probe(bilinear, tmp_path / "run", {"epoch": 3})
    with pytest.raises(ValueError, match=r"protocol.mode='hires'; expected one of \('highres', 'lowres'\)"):
        probe(bilinear, tmp_path / "run", {"mode": "hires"})
    with pytest.raises(ValueError, match="protocol.epochs must be >= 1; got 0"):
        probe(bilinear, tmp_path / "run", {"epochs": 0})
    with pytest.raises(ValueError, match="protocol.lr must be a number; got 'fast'"):
        probe(bilinear, tmp_path / "run", {"lr": "fast"})
    from evaluation.protocol import get_protocol

    assert get_protocol("probe_segmentation").settings({"epochs": 2.0}).epochs == 2  # coerced, as train() does


def test_a_probe_state_of_another_run_is_refused(tmp_path, test_vit):
    root = fake_voc(tmp_path / "voc")
    probe(build_extractor(test_vit, "bilinear"), tmp_path / "run", voc_settings(root, epochs=1))
    state = torch.load(tmp_path / "run" / "probe_state.pt", weights_only=False)
    state["identity"]["channels"] = 999
    torch.save(state, tmp_path / "run" / "probe_state.pt")
    with pytest.raises(ValueError, match="holds a probe of another run"):
        probe(build_extractor(test_vit, "bilinear"), tmp_path / "run", voc_settings(root, epochs=2))
    (tmp_path / "run" / "probe_state.pt").unlink()
    probe(build_extractor(test_vit, "bilinear"), tmp_path / "run", voc_settings(root, epochs=1, stop_after_epoch=1))
    with pytest.raises(ValueError, match="holds a probe of another run"):  # same folder, another upsampler
        probe(build_extractor(test_vit, "nearest"), tmp_path / "run", voc_settings(root, epochs=1))


def test_a_probe_state_of_other_code_or_other_weights_is_refused(tmp_path, test_vit, monkeypatch):
    from wrc import provenance

    root = fake_voc(tmp_path / "voc")
    extractor = build_extractor(test_vit, {"name": "resize_conv"})
    probe(extractor, tmp_path / "run", voc_settings(root, epochs=2, stop_after_epoch=1))
    code = provenance.code_identity()
    monkeypatch.setattr(provenance, "code_identity", lambda: {**code, "commit": "0123abc"})
    with pytest.raises(ValueError, match=r"holds a probe made by other code \(code.commit: .*-> '0123abc'\)"):
        probe(extractor, tmp_path / "run", voc_settings(root, epochs=2))
    monkeypatch.setattr(provenance, "code_identity", lambda: code)
    with torch.no_grad():  # the same method trained further: another run
        next(extractor.upsampler.parameters()).add_(0.1)
    with pytest.raises(ValueError, match="holds a probe of another run \\(weights: "):
        probe(extractor, tmp_path / "run", voc_settings(root, epochs=2))


def test_probe_state_is_written_atomically_and_a_torn_one_is_a_clear_error(tmp_path, bilinear, monkeypatch):
    root = fake_voc(tmp_path / "voc")
    probe(bilinear, tmp_path / "run", voc_settings(root, epochs=2, stop_after_epoch=1))
    good = (tmp_path / "run" / "probe_state.pt").read_bytes()

    def killed(obj, handle):  # a kill in the middle of the next epoch's write
        handle.write(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        probe(bilinear, tmp_path / "run", voc_settings(root, epochs=2))
    monkeypatch.undo()
    assert (tmp_path / "run" / "probe_state.pt").read_bytes() == good  # the last good state survived
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".probe_state")]
    (tmp_path / "run" / "probe_state.pt").write_bytes(good[: len(good) // 2])  # torn by an older writer
    with pytest.raises(ValueError, match="probe_state.pt cannot be read .* delete it to start the probe over"):
        probe(bilinear, tmp_path / "run", voc_settings(root, epochs=2))
