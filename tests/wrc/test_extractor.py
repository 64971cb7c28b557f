"""The one resolver from an upsampler spec to a DenseFeatureExtractor, with its compatibility checks."""

from __future__ import annotations

import pytest
import torch

from wrc.checkpoint import save_checkpoint
from wrc.extractor import DenseFeatureExtractor, backbone_differences, build_extractor, resolve_upsampler
from wrc.upsamplers import create_upsampler


def saved_lift(path, backbone, step=7, **backbone_changes):
    """A LiFT checkpoint with its own random weights, trained (so its metadata says) on ``backbone``."""
    torch.manual_seed(step)
    upsampler = create_upsampler("lift", backbone.embed_dim, backbone.patch_size, image_channels=8)
    save_checkpoint(path, upsampler, {"backbone": {**backbone.spec(), **backbone_changes}, "step": step,
                                      "config": {"objective": {"name": "lift_multiscale"}}})
    return upsampler


def test_every_spec_form_resolves(tmp_path, test_vit, images):
    assert resolve_upsampler("bilinear", test_vit).name == "bilinear"
    assert resolve_upsampler({"name": "lift", "image_channels": 8}, test_vit).init_kwargs == {"image_channels": 8}
    saved = saved_lift(tmp_path / "run" / "checkpoints" / "step_0000007", test_vit)
    for spec in (tmp_path / "run", str(tmp_path / "run" / "checkpoints"), {"checkpoint": str(tmp_path / "run")}):
        extractor = build_extractor(test_vit, spec)
        with torch.no_grad():
            torch.testing.assert_close(extractor(images), DenseFeatureExtractor(test_vit, saved.eval())(images))
        assert extractor.upsampler_spec() == {"name": "lift", "kwargs": {"image_channels": 8},
                                              "checkpoint": str(spec["checkpoint"] if isinstance(spec, dict) else spec),
                                              "step": 7}
        assert extractor.training_info()["objective"] == "lift_multiscale"


def test_two_checkpoints_of_one_method_stay_two(tmp_path, test_vit):
    from evaluation.records import upsampler_label

    saved_lift(tmp_path / "a" / "step_0000001", test_vit, step=1)
    saved_lift(tmp_path / "b" / "step_0000002", test_vit, step=2)
    a, b = build_extractor(test_vit, tmp_path / "a"), build_extractor(test_vit, tmp_path / "b")
    assert upsampler_label(a.upsampler_spec()) != upsampler_label(b.upsampler_spec())
    assert not torch.equal(a.upsampler.head.weight, b.upsampler.head.weight)


def test_bad_specs_are_clear_errors(tmp_path, test_vit):
    with pytest.raises(ValueError, match="'bilinar' is neither a registered upsampler .* nor an existing checkpoint"):
        resolve_upsampler("bilinar", test_vit)
    with pytest.raises(ValueError, match="needs 'name' .* or 'checkpoint'"):
        resolve_upsampler({"image_channels": 8}, test_vit)
    with pytest.raises(TypeError, match="bad arguments for upsampler 'lift'"):
        resolve_upsampler({"name": "lift", "image_channel": 8}, test_vit)


def test_a_checkpoint_of_another_backbone_is_refused_unless_allowed(tmp_path, test_vit):
    other = create_upsampler("lift", 384, 16)
    save_checkpoint(tmp_path / "wide" / "step_0000001", other, {"backbone": {"name": "vit_small_patch16_224"}})
    with pytest.raises(ValueError, match="trained on 384-channel features with patch 16 .* test_vit has 64 channels"):
        resolve_upsampler(tmp_path / "wide", test_vit)
    # same width and patch, another model: the features would not match (cosine ~0 in practice)
    saved_lift(tmp_path / "same_shape" / "step_0000001", test_vit, name="vit_other_random_model", weights="random")
    with pytest.raises(ValueError, match=r"another backbone \(name: 'vit_other_random_model' -> 'test_vit'\)"):
        resolve_upsampler(tmp_path / "same_shape", test_vit)
    assert resolve_upsampler(tmp_path / "same_shape", test_vit, allow_backbone_mismatch=True).name == "lift"
    pretrained_spec = {**test_vit.spec(), "weights": "pretrained"}
    assert backbone_differences(test_vit.spec(), pretrained_spec) == ["weights: 'random' -> 'pretrained'"]
    assert backbone_differences({**test_vit.spec(), "layer": -2}, test_vit.spec()) == ["layer: -2 -> -1"]
    shrunk = {**test_vit.spec(), "model_args": {"depth": 2}}  # a model built smaller than timm's default
    assert backbone_differences(shrunk, test_vit.spec()) == ["model_args: {'depth': 2} -> {}"]
    assert backbone_differences(test_vit.spec(), {**test_vit.spec(), "model_args": {}}) == []


def test_backbone_tags_follow_timm_defaults():
    plain, tagged = {"name": "vit_small_patch14_dinov2"}, {"name": "vit_small_patch14_dinov2.lvd142m"}
    assert backbone_differences(plain, tagged) == []
    assert backbone_differences({"name": "vit_base_patch16_224.mae"}, {"name": "vit_base_patch16_224.augreg_in21k"})


def test_any_frozen_module_with_the_backbone_attributes_is_a_backbone():
    from evaluation.synthetic.oracle import OracleBackbone

    oracle = OracleBackbone()
    extractor = build_extractor(oracle, "bilinear")
    assert extractor(torch.rand(1, 3, 64, 64), output_size=(16, 16)).shape == (1, oracle.embed_dim, 16, 16)
    with pytest.raises(ValueError, match="expects 64-channel features but backbone"):
        DenseFeatureExtractor(oracle, create_upsampler("bilinear", 64, 8))


def test_a_backbone_agnostic_checkpoint_serves_another_backbone(tmp_path, test_vit):
    """NAF and AnyUp read any channel count: their checkpoint loads on a backbone of another width and patch, where a
    backbone-specific method's is refused."""
    anyup = create_upsampler("anyup", 48, 8, dim=16, heads=2)
    save_checkpoint(tmp_path / "step_0000001", anyup, {"backbone": {"name": "vit_other", "weights": "random"},
                                                         "step": 1})
    extractor = build_extractor(test_vit, tmp_path / "step_0000001")
    image = torch.rand(1, 3, 64, 96)
    out = extractor(image)
    assert out.shape[:2] == (1, test_vit.embed_dim) and test_vit.embed_dim != 48
