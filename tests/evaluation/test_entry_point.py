"""``python -m evaluation``: one Hydra entry point for every protocol, sweeps, launchers, checkpoints and resume."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from evaluation.__main__ import register_schemas, run
from evaluation.records import collect, read_record
from hydra_plugins.wrc_resolvers import upsampler_slug
from tests.conftest import REPO_ROOT
from tests.evaluation.test_probe import fake_voc
from wrc import FrozenBackbone
from wrc.checkpoint import save_checkpoint
from wrc.upsamplers import create_upsampler

EVAL_CONFIG = REPO_ROOT / "config" / "eval"


def evaluation(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "evaluation", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_sweep_over_upsamplers_writes_one_record_each(tmp_path):
    root = fake_voc(tmp_path / "voc")
    evaluation("-m", "protocol=probe_segmentation", "model=bilinear,nearest", "dataset=voc2012", f"dataset.root={root}",
               "dataset.size=32", "dataset.num_workers=0", "backbone=test_vit", "protocol.epochs=1", "device=cpu",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=REPO_ROOT)
    records = collect([tmp_path / "sweep"]).records
    assert sorted(r.label for r in records) == ["bilinear", "nearest"]
    assert {r.dataset["name"] for r in records} == {"voc2012"}
    assert records[0].command.startswith("python -m evaluation protocol=probe_segmentation model=")  # this job


def test_a_checkpoint_is_evaluated_from_any_directory_into_its_own_run_dir(tmp_path):
    backbone = FrozenBackbone("test_vit", "random")
    upsampler = create_upsampler("lift", backbone.embed_dim, backbone.patch_size, image_channels=8)
    save_checkpoint(tmp_path / "runs" / "lift_a" / "checkpoints" / "step_0000005", upsampler,
                    {"backbone": backbone.spec(), "step": 5})
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = evaluation("protocol=fidelity", "backbone=test_vit", f"checkpoint={tmp_path / 'runs' / 'lift_a'}",
                      "protocol.num_images=2", "protocol.image_size=32", "device=cpu", cwd=work)
    [path] = (work / "outputs" / "eval" / "fidelity" / "protocol_data" / "test_vit").glob("*/result.json")
    assert path.parent.name.startswith("ckpt-runs-lift_a-step_0000005-")  # the run, the step, a settings hash
    record = read_record(path)
    assert record.upsampler["name"] == "lift" and record.upsampler["step"] == 5
    assert record.upsampler["kwargs"] == {"image_channels": 8} and "lift" in proc.stdout


def test_rerunning_the_same_evaluation_resumes_it(tmp_path):
    root = fake_voc(tmp_path / "voc")
    config = {"backbone": {"name": "test_vit", "weights": "random"}, "model": {"name": "bilinear"},
              "dataset": {"name": "voc2012", "root": str(root), "train_split": "train", "val_split": "val",
                          "size": 32, "num_workers": 0},
              "protocol": {"epochs": 2, "batch_size": 2, "stop_after_epoch": 1}, "device": "cpu",
              "checkpoint": None, "allow_backbone_mismatch": False, "run_dir": str(tmp_path / "run")}
    assert run(config, "probe_segmentation") is None  # stopped (as a time-limited job would be)
    assert torch.load(tmp_path / "run" / "probe_state.pt", weights_only=False)["epoch"] == 1
    config["protocol"]["stop_after_epoch"] = None
    assert run(config, "probe_segmentation").metrics["miou"] >= 0


def test_run_refuses_unknown_keys_and_a_dataset_for_protocols_without_one(tmp_path):
    base = {"backbone": {"name": "test_vit", "weights": "random"}, "model": {"name": "bilinear"},
            "protocol": {}, "run_dir": str(tmp_path)}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['modle'\] in the evaluation config; valid keys"):
        run({**base, "modle": {}}, "fidelity")
    with pytest.raises(ValueError, match="protocol=fidelity takes no dataset= group"):
        run({**base, "dataset": {"name": "voc2012"}}, "fidelity")
    with pytest.raises(ValueError, match=r"protocol=davis takes no dataset= group \(name its dataset with "
                                         r"protocol.dataset=<name>"):
        run({**base, "dataset": {"name": "voc2012"}}, "davis")
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        run(base, "fidelty")


def test_misspelt_protocol_settings_are_refused_by_hydra():
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(EVAL_CONFIG)):
        with pytest.raises(Exception, match="num_image"):
            compose("evaluate", overrides=["protocol=fidelity", "protocol.num_image=3"])


def test_slurm_launcher_config_composes():
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(EVAL_CONFIG)):
        cfg = compose("evaluate", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1
    assert "submitit" in cfg.hydra.launcher._target_


@pytest.mark.parametrize("option", sorted(p.stem for p in (REPO_ROOT / "config" / "dataset").glob("*.yaml")))
def test_every_dataset_option_composes_and_matches_its_loader(option):
    from evaluation.datasets import DATASETS

    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(EVAL_CONFIG)):
        cfg = compose("evaluate", overrides=["protocol=probe_segmentation", f"dataset={option}"])
    assert cfg.dataset.name == option
    accepted = set(inspect.signature(DATASETS[option]).parameters)
    extra = set(cfg.dataset) - {"name", "root", "train_split", "val_split", "num_workers"}
    assert extra <= accepted, f"config/dataset/{option}.yaml keys {extra - accepted} are not loader arguments"


def test_run_directory_names_tell_checkpoints_steps_and_settings_apart(tmp_path):
    from hydra_plugins.wrc_resolvers import settings_hash

    assert upsampler_slug("bilinear", None) == "bilinear"
    assert upsampler_slug("bilinear", "outputs/lift/2026-01-01_10-00-00") == "ckpt-lift-2026-01-01_10-00-00"
    assert upsampler_slug("x", "/r/wrc run/checkpoints/step_0000300") == "ckpt-wrc_run-step_0000300"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step_0002000\n")
    assert upsampler_slug("x", str(tmp_path / "run")).endswith("-run-step_0002000")
    assert settings_hash({"name": "lift"}, {"epochs": 2}) == settings_hash({"name": "lift"}, {"epochs": 2})
    assert settings_hash({"name": "lift"}, {"epochs": 2}) != settings_hash({"name": "lift"}, {"epochs": 3})
    assert settings_hash({"epochs": 2, "stop_after_epoch": 1}) == settings_hash({"epochs": 2})  # resumes


def resolved_run_dir(**nodes) -> str:
    """config/hydra/eval.yaml's run directory resolved against ``nodes`` (the protocol choice replaced by "p")."""
    from omegaconf import OmegaConf

    from hydra_plugins.wrc_resolvers import register_resolvers

    register_resolvers()
    hydra_config = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "config" / "hydra" / "eval.yaml"))
    template = hydra_config["run"]["dir"]
    template = template.replace("${hydra:runtime.choices.protocol}", "p")
    base = {"backbone": {"name": "vit_small_patch16_224.dino", "facet": "token"}, "model": {"name": "bilinear"},
            "checkpoint": None, "protocol": {}, "dataset": None}
    return OmegaConf.create({**base, **nodes, "dir": template}).dir


def test_run_directories_tell_backbone_facets_and_protocol_datasets_apart():
    token = resolved_run_dir()
    key = resolved_run_dir(backbone={"name": "vit_small_patch16_224.dino", "facet": "key"})
    assert token != key and token.split("/")[:-1] == key.split("/")[:-1]  # same folder, another settings hash
    assert token.split("/")[3] == "protocol_data"
    assert resolved_run_dir(protocol={"dataset": "davis2017"}).split("/")[3] == "davis2017"
    assert resolved_run_dir(dataset={"name": "voc2012"}).split("/")[3] == "voc2012"
