from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from wrc.backbone import BackboneWeightsError, FrozenBackbone


class TestFrozenBackbone:
    def test_dimensions_come_from_timm(self, test_vit):
        model = timm.create_model("test_vit", pretrained=False)
        assert test_vit.embed_dim == model.embed_dim == 64
        assert test_vit.patch_size == 16
        assert test_vit.num_prefix_tokens == model.num_prefix_tokens
        cfg = timm.data.resolve_model_data_config(model)
        assert test_vit.mean.flatten().tolist() == pytest.approx(list(cfg["mean"]))

    @pytest.mark.parametrize("policy, size, grid", [
        ("resize", (64, 96), (4, 6)), ("resize", (70, 90), (4, 6)), ("pad", (70, 90), (5, 6)),
        ("crop", (70, 90), (4, 5)), ("resize", (16, 40), (1, 2)),
    ])
    def test_any_image_size(self, policy, size, grid):
        backbone = FrozenBackbone("test_vit", "random", size_policy=policy)
        out = backbone(torch.rand(2, 3, *size))
        assert out.shape == (2, 64, *grid) and out.dtype == torch.float32
        assert backbone.grid_size(*size) == grid

    def test_matches_timm_on_multiples_of_the_patch(self, test_vit):
        """Oracle: timm's own forward_features, reshaped, for a non-square input."""
        image = torch.rand(1, 3, 32, 48)
        x = (image - test_vit.mean) / test_vit.std
        tokens = test_vit.model.forward_features(x)[:, test_vit.num_prefix_tokens :]  # 1, 6, C (final norm)
        expected = tokens.transpose(1, 2).reshape(1, 64, 2, 3)
        torch.testing.assert_close(test_vit(image), expected)

    def test_key_facet_matches_manual_projection(self):
        backbone = FrozenBackbone("test_vit", "random", facet="key", layer=-1)
        image = torch.rand(1, 3, 32, 32)
        model = backbone.model
        x = (image - backbone.mean) / backbone.std
        with torch.no_grad():
            h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
            for blk in model.blocks[:-1]:
                h = blk(h)
            qkv = model.blocks[-1].attn.qkv(model.blocks[-1].norm1(h))
        key = qkv[..., 64:128][:, backbone.num_prefix_tokens :]  # 1, 4, C
        torch.testing.assert_close(backbone(image), key.transpose(1, 2).reshape(1, 64, 2, 2))

    def test_frozen_and_always_eval(self, test_vit):
        test_vit.train()
        assert not test_vit.training and not test_vit.model.training
        assert not any(p.requires_grad for p in test_vit.parameters())
        out = test_vit(torch.rand(1, 3, 32, 32, requires_grad=True))
        assert not out.requires_grad

    def test_bf16_autocast_returns_fp32(self):
        backbone = FrozenBackbone("test_vit", "random", precision="bf16")
        reference = FrozenBackbone("test_vit", "random")
        image = torch.rand(1, 3, 32, 32)
        out = backbone(image)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, reference(image), atol=0.1, rtol=0.1)

    def test_random_weights_are_reproducible(self):
        a, b = FrozenBackbone("test_vit", "random"), FrozenBackbone("test_vit", "random")
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)

    def test_local_checkpoint(self, tmp_path):
        source = timm.create_model("test_vit", pretrained=False)
        torch.nn.init.normal_(source.pos_embed, std=1.0)
        path = tmp_path / "vit.safetensors"
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
        backbone = FrozenBackbone("test_vit", str(path))
        torch.testing.assert_close(backbone.model.pos_embed, source.pos_embed)


class TestBackboneErrors:
    def test_offline_pretrained_says_what_to_pass(self):
        with pytest.raises(BackboneWeightsError, match="backbone.weights=random"):
            FrozenBackbone("vit_small_patch16_224.dino", "pretrained")

    def test_missing_checkpoint_file(self):
        with pytest.raises(BackboneWeightsError, match="neither 'pretrained', 'random' nor an existing"):
            FrozenBackbone("test_vit", "/no/such/file.pth")

    def test_checkpoint_of_another_architecture(self, tmp_path):
        path = tmp_path / "other.safetensors"
        save_file({"weight": torch.zeros(3)}, str(path))
        with pytest.raises(BackboneWeightsError, match="is it a checkpoint of that architecture"):
            FrozenBackbone("test_vit", str(path))

    def test_unknown_name(self):
        with pytest.raises(ValueError, match="unknown backbone.name='not_a_vit'"):
            FrozenBackbone("not_a_vit", "random")

    def test_image_smaller_than_a_patch(self, test_vit):
        with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
            test_vit(torch.rand(1, 3, 8, 64))

    @pytest.mark.parametrize("kwargs, match", [
        ({"facet": "keys"}, "backbone.facet"), ({"size_policy": "stretch"}, "backbone.size_policy"),
        ({"precision": "fp8"}, "backbone.precision"), ({"layer": 6}, "backbone.layer=6 out of range"),
    ])
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            FrozenBackbone("test_vit", "random", **kwargs)

    def test_not_an_image(self, test_vit):
        with pytest.raises(ValueError, match=r"image must be \(B, 3, H, W\)"):
            test_vit(torch.rand(1, 1, 32, 32))


def test_several_layers_are_concatenated():
    image = torch.rand(1, 3, 32, 48)
    both = FrozenBackbone("test_vit", "random", layer=[2, -1], final_norm=False)
    assert both.embed_dim == 128
    singles = [FrozenBackbone("test_vit", "random", layer=i, final_norm=False)(image) for i in (2, 5)]
    torch.testing.assert_close(both(image), torch.cat(singles, dim=1))
    keys = FrozenBackbone("test_vit", "random", layer=[1, 3], facet="key")(image)
    assert keys.shape == (1, 128, 2, 3)
    torch.testing.assert_close(keys[:, 64:], FrozenBackbone("test_vit", "random", layer=3, facet="key")(image))
