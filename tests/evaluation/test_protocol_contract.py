"""The evaluation contract, for every registered protocol: it runs end to end on fake data with bilinear on the
tiny test ViT (or on its own backbone), writes a valid record that tables read, and has a config that composes.

A new protocol is picked up by these tests from the registry; it only has to add its fake data to FAKE_SETTINGS.
"""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_dir

from evaluation.__main__ import register_schemas
from evaluation.protocol import evaluate, get_protocol, list_protocols
from evaluation.records import read_record
from evaluation.tables import build_table
from tests.conftest import REPO_ROOT
from tests.evaluation.test_probe import fake_nyu, fake_voc, nyu_settings, voc_settings
from wrc.extractor import build_extractor

FAKE_SETTINGS = {  # protocol: tmp_path -> settings on fake data, as small as still proves the run
    "fidelity": lambda tmp: {"num_images": 2, "image_size": 32},
    "probe_segmentation": lambda tmp: voc_settings(fake_voc(tmp / "voc"), epochs=1),
    "probe_depth": lambda tmp: nyu_settings(fake_nyu(tmp / "nyu"), epochs=1),
    "synthetic": lambda tmp: {"image_size": 32, "test_scenes": 2, "probe_scenes": 2},
}


def test_every_protocol_has_fake_data_here():
    assert sorted(FAKE_SETTINGS) == list_protocols()


@pytest.mark.parametrize("name", list_protocols())
def test_protocol_runs_end_to_end_and_writes_a_valid_record(name, tmp_path, test_vit):
    protocol = get_protocol(name)
    settings = protocol.settings(FAKE_SETTINGS[name](tmp_path))
    backbone = protocol.make_backbone(settings) or test_vit
    record = evaluate(protocol, build_extractor(backbone, "bilinear"), settings, tmp_path / "run")
    saved = read_record(tmp_path / "run" / "result.json")
    assert saved == record and saved.protocol == name and saved.label == "bilinear"
    assert saved.backbone == backbone.spec() and saved.upsampler["name"] == "bilinear"
    assert saved.dataset["name"] and "split" in saved.dataset and "root" in saved.dataset
    for metric in protocol.table.headline:
        assert isinstance(saved.metrics[metric], float), metric
    assert set(saved.metrics) <= {c.metric for c in protocol.table.columns}  # tables can show every metric
    assert saved.config == dataclasses.asdict(settings) and saved.seconds >= 0
    assert saved.code_version["version"] and saved.command and saved.device
    markdown, _ = build_table([saved], name)
    assert "| bilinear |" in markdown


@pytest.mark.parametrize("name", list_protocols())
def test_protocol_declares_settings_with_defaults_and_a_table(name):
    protocol = get_protocol(name)
    assert dataclasses.is_dataclass(protocol.Settings)
    protocol.settings({})  # every setting has a default
    assert set(protocol.table.headline) <= {c.metric for c in protocol.table.columns}
    with pytest.raises(ValueError, match=f"unknown setting\\(s\\) 'no_such_key' for protocol={name}"):
        protocol.settings({"no_such_key": 1})


@pytest.mark.parametrize("name", list_protocols())
def test_protocol_config_composes_from_its_dataclass(name):
    assert (REPO_ROOT / "config" / "eval" / "protocol" / f"{name}.yaml").is_file()
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "config" / "eval")):
        cfg = compose("evaluate", overrides=[f"protocol={name}", "backbone=test_vit"])
    assert dict(cfg.protocol) == dataclasses.asdict(get_protocol(name).settings({}))
