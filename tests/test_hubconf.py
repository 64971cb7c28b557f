"""hubconf.py through torch.hub itself (``torch.hub.load(<checkout>, ..., source="local")``): one entry per learned
upsampler, ready extractors on random timm backbones, and checkpoints (local or hf-hub) that compute what the saved
upsampler computes on what the backbone computes."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.wrc.test_hub import SHA_A, hub_cache
from wrc import DenseFeatureExtractor, FrozenBackbone, create_upsampler
from wrc.checkpoint import save_checkpoint
from wrc.upsamplers import get_upsampler_class, list_upsamplers


def hub_load(entry: str, *args, **kwargs):
    return torch.hub.load(str(REPO_ROOT), entry, *args, source="local", **kwargs)


@pytest.fixture(scope="module")
def backbone() -> FrozenBackbone:
    return FrozenBackbone("test_vit", "random")  # what config/backbone/test_vit.yaml builds


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, backbone):
    """A run directory with a LiFT checkpoint trained (here: perturbed) on the random test_vit."""
    up = create_upsampler("lift", backbone.embed_dim, backbone.patch_size, image_channels=8)
    with torch.no_grad():
        for p in up.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "checkpoints" / "step_0000005", up.eval(), {"backbone": backbone.spec(), "step": 5})
    return run, up


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))


def test_entries_are_the_learned_upsamplers_and_upsampler():
    """What torch.hub.list would show: the public callables of hubconf (torch.hub's own rule)."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = {name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_")}
    learned = {name for name in list_upsamplers() if get_upsampler_class(name).trainable}
    assert entries == learned | {"upsampler"}
    assert {"wrc", "lift", "featup_jbu", "converse2d"} <= entries and not {"bilinear", "srt"} & entries
    assert "config/model/lift.yaml" in module.lift.__doc__


def test_a_fresh_entry_is_a_ready_extractor_on_the_named_backbone(image):
    extractor = hub_load("wrc", backbone="test_vit", image_channels=8)
    assert isinstance(extractor, DenseFeatureExtractor)
    assert extractor.backbone.spec()["name"] == "test_vit" and extractor.backbone.weights == "random"
    assert extractor.upsampler.name == "wrc" and extractor.upsampler.init_kwargs == {"image_channels": 8}
    assert extractor(image, output_size=(12, 16)).shape == (1, 64, 12, 16)
    bare = hub_load("lift", backbone={"name": "test_vit"}, extractor=False)  # weights never needed for this
    assert bare.name == "lift" and (bare.in_channels, bare.patch_size) == (64, 16)


def test_a_checkpoint_loads_on_the_backbone_it_was_trained_on(run_dir, backbone, image):
    run, original = run_dir
    with torch.no_grad():
        expected = original(backbone(image), image, (12, 16))
    for extractor in (hub_load("lift", pretrained=str(run)), hub_load("upsampler", str(run / "checkpoints"))):
        assert extractor.backbone.spec() == backbone.spec()
        with torch.no_grad():
            torch.testing.assert_close(extractor(image, (12, 16)), expected)
    bare = hub_load("lift", pretrained=str(run), extractor=False)
    assert not isinstance(bare, DenseFeatureExtractor) and bare.source["step"] == 5
    with torch.no_grad():
        torch.testing.assert_close(bare(backbone(image), image, (12, 16)), expected)


def test_an_hf_hub_id_loads_from_the_cache(run_dir, backbone, image, tmp_path, monkeypatch):
    run, original = run_dir
    hub_cache(tmp_path, "org/lift-test-vit", {SHA_A: run / "checkpoints" / "step_0000005"}, {"main": SHA_A})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extractor = hub_load("upsampler", "hf-hub:org/lift-test-vit")
    assert extractor.upsampler_spec()["checkpoint"] == "hf-hub:org/lift-test-vit"  # what result records will name
    with torch.no_grad():
        torch.testing.assert_close(extractor(image, (12, 16)), original(backbone(image), image, (12, 16)))


def test_bad_requests_say_what_to_pass(run_dir):
    run, _ = run_dir
    with pytest.raises(ValueError, match=r"pretrained=True: no weights of 'lift' .* released yet.*hf-hub:"):
        hub_load("lift", pretrained=True)
    with pytest.raises(ValueError, match="is a 'lift' checkpoint, not 'wrc'"):
        hub_load("wrc", pretrained=str(run))
    with pytest.raises(TypeError, match=r"arguments \['image_channels'\] cannot be combined with a checkpoint"):
        hub_load("lift", pretrained=str(run), image_channels=4)
    with pytest.raises(ValueError, match="neither a registered upsampler"):
        hub_load("upsampler", "no_such_thing")
