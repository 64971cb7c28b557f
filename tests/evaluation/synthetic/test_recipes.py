"""The benchmark trains every learned method with the shared optimiser, except those given their paper's (OWN_RECIPE),
and says so in the record."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import wrc.training
from evaluation.synthetic import benchmark


@pytest.fixture
def configs(monkeypatch):
    """The training config each train_method call passes to wrc.training.train (nothing is trained)."""
    seen = {}

    def fake_train(config, backbone, dataset):
        seen[config["model"]["name"]] = config
        seen[config["model"]["name"] + ".dataset"] = dataset
        return SimpleNamespace(upsampler=benchmark.create_upsampler("bilinear", 32, 8))

    monkeypatch.setattr(wrc.training, "train", fake_train)
    return seen


def test_uplift_trains_with_its_papers_optimiser_and_the_others_with_the_shared_one(configs, tmp_path):
    args = benchmark.parse_args(["--work-dir", str(tmp_path)])
    for name in ("uplift", "jafar"):
        benchmark.train_method(name, benchmark.OracleBackbone(), args)
    uplift, jafar = configs["uplift"], configs["jafar"]
    assert uplift["optimizer"] == {**jafar["optimizer"], "lr": 1e-3, "weight_decay": 0.0, "scheduler": "constant",
                                   "warmup_steps": 0}
    assert uplift["train"]["grad_clip"] == 0.0 and jafar["train"]["grad_clip"] == 1.0
    assert jafar["optimizer"]["lr"] == args.lr and jafar["optimizer"]["scheduler"] == "cosine"
    assert {k: v for k, v in uplift.items() if k not in ("optimizer", "train", "model", "objective", "run_dir")} == {
        k: v for k, v in jafar.items() if k not in ("optimizer", "train", "model", "objective", "run_dir")}


def test_every_recipe_names_known_methods_and_config_groups():
    for name, groups in benchmark.OWN_RECIPE.items():
        assert name in benchmark.TRAINED
        assert set(groups) <= {"optimizer", "train"}
    assert set(benchmark.STARTS_FROM) | set(benchmark.LARGER_SCENES) <= set(benchmark.TRAINED)


def test_a_recipe_methods_record_states_the_learning_rate_it_trained_with():
    assert benchmark.recipe_lr("uplift") == {"lr": 1e-3} and benchmark.recipe_lr("jafar") == {}


def test_the_scenes_deliver_their_region_masks_only_to_an_objective_with_a_mask_term(configs, tmp_path):
    """LoftUp's mask term takes SA-1B's masks in its paper; here the scenes' regions play that role."""
    assert benchmark.TRAINED["loftup"][1] == {"name": "loftup_stage1", "mask_weight": 1.0}
    args = benchmark.parse_args(["--work-dir", str(tmp_path)])
    for name in ("loftup", "jafar"):
        benchmark.train_method(name, benchmark.OracleBackbone(), args)
    assert configs["loftup.dataset"].delivers_masks and "masks" in configs["loftup.dataset"][0]
    assert not configs["jafar.dataset"].delivers_masks


def test_a_mask_term_is_on_only_with_a_weight_and_a_share_above_zero():
    assert benchmark.has_mask_term({"name": "loftup_stage1", "mask_weight": 1.0})
    assert not benchmark.has_mask_term({"name": "loftup_stage1", "mask_weight": 1.0, "mask_alpha": 0.0})
    assert not benchmark.has_mask_term({"name": "loftup_stage1"})
    assert not benchmark.has_mask_term({"name": "jafar_lowres"})  # no mask term at all


def test_loftup_trains_with_its_stage_1_optimiser(configs, tmp_path):
    """config/experiment/loftup_stage1.yaml: lr 1e-4 constant after a 10-step warm-up, no decay, no clipping."""
    benchmark.train_method("loftup", benchmark.OracleBackbone(), benchmark.parse_args(["--work-dir", str(tmp_path)]))
    optimizer, train = configs["loftup"]["optimizer"], configs["loftup"]["train"]
    assert (optimizer["lr"], optimizer["weight_decay"], optimizer["scheduler"], optimizer["warmup_steps"]) == \
        (1e-4, 0.0, "constant", 10)
    assert train["grad_clip"] == 0.0 and benchmark.recipe_lr("loftup") == {"lr": 1e-4}


def test_loftups_stage_2_starts_from_its_stage_1_run_on_larger_scenes(monkeypatch, tmp_path):
    """config/experiment/loftup_stage2.yaml, scaled: stage 1's run is trained first and its directory is stage 2's
    init_from; stage 2's scenes are twice --image-size with student sizes at LoftUp's shares of the image (224 ... 518
    of 896 px) on the oracle's 8-px lattice, its masks on, and its own optimiser (AdamW 1e-3 constant, decay 0.01)."""
    calls = []

    def fake_train(config, backbone, dataset):
        calls.append((config, dataset))
        return SimpleNamespace(upsampler=benchmark.create_upsampler("bilinear", 32, 8))

    monkeypatch.setattr(wrc.training, "train", fake_train)
    args = benchmark.parse_args(["--work-dir", str(tmp_path), "--image-size", "128"])
    _, seconds = benchmark.train_method("loftup_2stages", benchmark.OracleBackbone(), args)
    (stage1, scenes1), (stage2, scenes2) = calls
    assert seconds is not None  # both stages trained in this call: the row's seconds count both
    assert stage1["objective"]["name"] == "loftup_stage1" and stage1["run_dir"] == str(tmp_path / "loftup")
    assert stage2["objective"]["name"] == "loftup_stage2" and stage2["run_dir"] == str(tmp_path / "loftup_2stages")
    assert stage2["objective"]["init_from"] == stage1["run_dir"]
    assert stage2["objective"]["sizes"] == [64, 96, 128, 144] and stage2["objective"]["crop_align"] == 8
    assert stage2["data"]["image_size"] == 256 and scenes2[0]["image"].shape[-2:] == (256, 256)
    assert scenes1[0]["image"].shape[-2:] == (128, 128) and scenes2.delivers_masks and scenes1.delivers_masks
    assert (stage2["optimizer"]["lr"], stage2["optimizer"]["weight_decay"], stage2["optimizer"]["scheduler"]) == \
        (1e-3, 0.01, "constant") and stage2["train"]["grad_clip"] == 0.0
    assert stage2["model"] == stage1["model"] == {"name": "loftup"}


def test_a_two_stage_rows_record_says_where_it_starts_and_on_what_scenes():
    args = benchmark.parse_args(["--image-size", "128"])
    assert benchmark.starting_point("loftup_2stages", args) == {"starts_from": {"row": "loftup", "steps": 200}}
    assert benchmark.scene_record("loftup_2stages", args, 8) == {"image_size": 256,
                                                                  "objective_sizes": [64, 96, 128, 144]}
    assert benchmark.starting_point("wrc", args) == {} and benchmark.scene_record("wrc", args, 8) == {}
    # tiny scenes merge sizes rather than repeating them
    tiny = benchmark.parse_args(["--image-size", "16"])
    assert benchmark.training_scene("loftup_2stages", tiny, 8) == (32, {"sizes": [8, 16]})  # 1, 1.5, 2, 2.3 patches
