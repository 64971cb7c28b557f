"""The evaluation contract, for every registered protocol: it runs end to end on fake data with bilinear on the
tiny test ViT (or on its own backbone), writes a valid record that tables read, and has a config that composes.

A new protocol is picked up by these tests from the registry; it only has to add its fake data to FAKE_SETTINGS.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hydra import compose, initialize_config_dir

from evaluation.__main__ import register_schemas
from evaluation.protocol import evaluate, get_protocol, list_protocols
from evaluation.records import read_record
from evaluation.tables import build_table
from tests.conftest import REPO_ROOT
from tests.evaluation import test_davis, test_object_discovery, test_salient, test_spair
from tests.evaluation.detection.test_detection_protocol import fake_settings as fake_detection_settings
from tests.evaluation.test_probe import fake_nyu, fake_voc, nyu_settings, voc_settings
from wrc.extractor import build_extractor

FAKE_SETTINGS = {  # protocol: tmp_path -> settings on fake data, as small as still proves the run
    "fidelity": lambda tmp: {"num_images": 2, "image_size": 32},
    "probe_segmentation": lambda tmp: voc_settings(fake_voc(tmp / "voc"), epochs=1),
    "probe_depth": lambda tmp: nyu_settings(fake_nyu(tmp / "nyu"), epochs=1),
    "synthetic": lambda tmp: {"image_size": 32, "test_scenes": 2, "probe_scenes": 2},
    "davis": test_davis.fake_settings,
    "spair": test_spair.fake_settings,
    "object_discovery": test_object_discovery.fake_settings_object_discovery,
    "salient": test_salient.fake_settings_salient,
    "detection": fake_detection_settings,
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


# Today's attention upsamplers, each through every protocol: at its defaults, except where the fake data is too small
# for it or the default costs minutes (their full-size behaviour is tested in tests/wrc/upsamplers).
MODERN_PEERS = {
    "jafar": {}, "anyup": {}, "loftup": {}, "uplift": {},
    "naf": {"kernel": 1},  # the fakes' token grids are 2-4 a side; NAF's 9 x 9 window needs >= 9
    "upsample_anything": {"steps": 2},  # test-time fitting, 51 steps per image by default
}


@pytest.mark.parametrize("method", MODERN_PEERS)
@pytest.mark.parametrize("name", list_protocols())
def test_every_modern_peer_runs_through_every_protocol(name, method, tmp_path, test_vit):
    protocol = get_protocol(name)
    settings = protocol.settings(FAKE_SETTINGS[name](tmp_path))
    backbone = protocol.make_backbone(settings) or test_vit
    extractor = build_extractor(backbone, {"name": method, **MODERN_PEERS[method]})
    record = evaluate(protocol, extractor, settings, tmp_path / "run")
    assert record.upsampler["name"] == method and record.upsampler["kwargs"] == MODERN_PEERS[method]
    for metric in protocol.table.headline:
        assert isinstance(record.metrics[metric], float) and math.isfinite(record.metrics[metric]), metric
    assert f"| {method} |" in build_table([record], name)[0]


@pytest.mark.parametrize("name", list_protocols())
def test_protocol_declares_settings_with_defaults_and_a_table(name):
    protocol = get_protocol(name)
    assert dataclasses.is_dataclass(protocol.Settings)
    protocol.settings({})  # every setting has a default
    assert set(protocol.table.headline) <= {c.metric for c in protocol.table.columns}
    with pytest.raises(ValueError, match="unknown setting protocol.no_such_key; the valid keys of protocol are: "):
        protocol.settings({"no_such_key": 1})


@pytest.mark.parametrize("name", list_protocols())
def test_protocol_config_composes_from_its_dataclass(name):
    assert (REPO_ROOT / "config" / "eval" / "protocol" / f"{name}.yaml").is_file()
    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "config" / "eval")):
        cfg = compose("evaluate", overrides=[f"protocol={name}", "backbone=test_vit"])
    assert dict(cfg.protocol) == dataclasses.asdict(get_protocol(name).settings({}))


TOY_PROTOCOL = '''
from dataclasses import dataclass

from evaluation.protocol import Column, Evaluation, Protocol, TableSpec, register_protocol


@dataclass
class ToySettings:
    side: int = 32


@register_protocol
class MeanFeature(Protocol):
    name = "toy_mean_feature"
    Settings = ToySettings
    table = TableSpec(columns=(Column("mean"),), headline=("mean",), per_dataset=False)

    def run(self, extractor, settings, run_dir):
        import torch

        features = extractor(torch.full((1, 3, settings.side, settings.side), 0.5))
        return Evaluation(metrics={"mean": float(features.mean())}, dataset={"name": "grey", "split": None,
                                                                             "root": None})
'''


def test_a_protocol_is_one_file_and_one_yaml(tmp_path, monkeypatch, test_vit):
    """A toy protocol in a temporary module (added to the package path, as a new file in evaluation/protocols/
    would be) is found by the registry, runs through evaluate(), tabulates, and composes with its YAML."""
    import evaluation.protocols
    from evaluation.protocol import PROTOCOLS
    from evaluation.records import collect

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "toy_mean_feature.py").write_text(TOY_PROTOCOL)
    (tmp_path / "conf" / "protocol").mkdir(parents=True)
    (tmp_path / "conf" / "protocol" / "toy_mean_feature.yaml").write_text(
        "defaults:\n  - /protocol_schema/toy_mean_feature@_here_\n  - _self_\nside: 48\n")
    monkeypatch.setattr(evaluation.protocols, "__path__", [*evaluation.protocols.__path__, str(tmp_path / "pkg")])
    try:
        assert "toy_mean_feature" in list_protocols()
        record = evaluate("toy_mean_feature", build_extractor(test_vit, "bilinear"), {}, tmp_path / "run")
        assert isinstance(record.metrics["mean"], float) and record.config == {"side": 32}
        assert "| bilinear |" in build_table(collect([tmp_path / "run"]).records, "toy_mean_feature")[0]
        register_schemas()
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "config" / "eval")):
            searchpath = f"hydra.searchpath=[file://{REPO_ROOT / 'config'},file://{tmp_path / 'conf'}]"
            cfg = compose("evaluate", overrides=["protocol=toy_mean_feature", searchpath, "protocol.side=64"])
        assert cfg.protocol.side == 64
        with pytest.raises(ValueError, match="evaluation protocol name 'toy_mean_feature' is already registered"):
            class Again(PROTOCOLS.get("toy_mean_feature")):
                name = "toy_mean_feature"

            PROTOCOLS.register(Again)
    finally:
        PROTOCOLS.unregister("toy_mean_feature")
