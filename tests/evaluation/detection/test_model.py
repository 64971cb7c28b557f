"""The simple feature pyramid and the Mask R-CNN around it: level shapes and strides for patch 8, 14 and 16 on
non-square images, the upsampler variants, ViTDet's heads, the fine-tuning path, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead

from evaluation.detection.coco import CategoryMap
from evaluation.detection.model import (
    LEVELS,
    STRIDES,
    LayerNorm2d,
    SimpleFeaturePyramid,
    ViTDetBackbone,
    build_detector,
)
from evaluation.detection.settings import DetectorModel
from evaluation.detection.train import make_detector
from wrc.checkpoint import save_checkpoint
from wrc.extractor import resolve_upsampler
from wrc.upsamplers import create_upsampler, list_upsamplers

TINY = {"out_channels": 16, "representation_size": 32, "rois_per_image": 16, "proposals_per_image": 32,
        "anchor_sizes": (8, 16, 32, 64, 128)}
SLOW = {"featup_implicit": "fits an implicit network per image (seconds per call)"}


class PatchMean(nn.Module):
    """A backbone stub of patch P: each token is the mean colour of its patch, tiled to 8 channels; records the
    size it was given."""

    embed_dim = 8

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.seen: list[tuple[int, int]] = []

    def spec(self) -> dict:
        return {"name": "patch_mean", "patch_size": self.patch_size}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(image.shape[-2:]))
        return F.avg_pool2d(image, self.patch_size).repeat(1, 3, 1, 1)[:, :8]


@pytest.mark.parametrize("patch", [8, 14, 16])
def test_levels_have_strides_4_to_64_for_any_patch(patch):
    """The ViT sees the batch resized by P / 16 (so 14 * 8 = 112 rows of a 128-row batch for patch 14) and every
    level has the exact stride 4 ... 64 of the 128 x 192 input."""
    stub = PatchMean(patch)
    body = ViTDetBackbone(stub, None, out_channels=16)
    levels = body(torch.rand(2, 3, 128, 192))
    assert stub.seen == [(128 // 16 * patch, 192 // 16 * patch)]
    assert list(levels) == list(LEVELS)
    for (name, level), stride in zip(levels.items(), STRIDES, strict=True):
        assert level.shape == (2, 16, 128 // stride, 192 // stride), name


def test_patch_14_tokens_cover_the_same_pixels_as_a_stride_16_grid():
    """Token (i, j) of the shrunk image covers the image's pixels [16i, 16i + 16) x [16j, 16j + 16): on an image
    constant on 16 x 16 blocks it gives the block values up to the antialiasing filter's blur at block edges, while
    patch-14 tokens of the unresized image straddle blocks."""
    blocks = torch.rand(1, 3, 4, 6)
    image = blocks.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3)
    body = ViTDetBackbone(PatchMean(14), None, out_channels=16)
    error = (body.tokens(image)[:, :3] - blocks).abs().max()
    misaligned = (F.avg_pool2d(image, 14)[..., :4, :6] - blocks).abs().max()
    assert error < 0.03 and misaligned > 4 * error


def test_the_real_detector_pads_to_exact_strides(test_vit):
    detector = build_detector(test_vit, None, 3, image_size=64, **TINY).eval()
    images, _ = detector.transform([torch.rand(3, 40, 70)])  # resized so the longer side is 64, padded to 64
    features = detector.backbone(images.tensors)
    height, width = images.tensors.shape[-2:]
    assert (height, width) == (64, 64)
    grids = [f.shape[-2:] for f in features.values()]
    assert [(height // g[0], width // g[1]) for g in grids] == [(s, s) for s in STRIDES]


def test_upsampler_pyramid_uses_its_2x_and_4x():
    """bilinear p3/p2 are the bilinear 2x and 4x of F (before the projections); LiFT's 4x is its own 4x."""
    features, image = torch.rand(1, 64, 4, 6), torch.rand(1, 3, 64, 96)
    bilinear = create_upsampler("bilinear", 64, 16)
    p2, p3 = SimpleFeaturePyramid(64, 16, bilinear).upsampled(features, image)
    assert torch.allclose(p3, F.interpolate(features, size=(8, 12), mode="bilinear", align_corners=False))
    assert torch.allclose(p2, F.interpolate(features, size=(16, 24), mode="bilinear", align_corners=False))
    lift = create_upsampler("lift", 64, 16, image_channels=8).eval()
    p2, p3 = SimpleFeaturePyramid(64, 16, lift).upsampled(features, image)
    assert torch.allclose(p2, lift(features, image, (16, 24)), atol=1e-6)
    assert torch.allclose(p3, lift(features, image, (8, 12)), atol=1e-6)


def test_tconv_pyramid_is_vitdets():
    pyramid = SimpleFeaturePyramid(64, 16)
    assert [m.in_channels for m in (pyramid.up4[0], pyramid.up4[3], pyramid.up2)] == [64, 32, 64]
    assert [m.out_channels for m in (pyramid.up4[0], pyramid.up4[3], pyramid.up2)] == [32, 16, 32]
    assert [lat[0].in_channels for lat in pyramid.lateral] == [16, 32, 64, 64]
    for conv in (*pyramid.lateral, *pyramid.output):
        assert conv[0].bias is None and isinstance(conv[1], LayerNorm2d)


def test_layer_norm_2d_is_layer_norm_over_channels():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    norm = LayerNorm2d(5).double()
    expected = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-6)
    assert torch.allclose(norm(x), expected)


def test_vitdet_heads_and_the_light_switch(test_vit):
    vitdet = build_detector(test_vit, None, 3, heads="vitdet", **TINY)
    light = build_detector(test_vit, None, 3, heads="torchvision", **TINY)
    assert len(vitdet.rpn.head.conv) == 2 and len(light.rpn.head.conv) == 1
    assert isinstance(vitdet.roi_heads.box_head, FastRCNNConvFCHead) and isinstance(light.roi_heads.box_head,
                                                                                     TwoMLPHead)
    assert sum(isinstance(m, LayerNorm2d) for m in vitdet.roi_heads.box_head.modules()) == 4
    assert sum(isinstance(m, LayerNorm2d) for m in vitdet.roi_heads.mask_head.modules()) == 4
    assert not any(isinstance(m, LayerNorm2d) for m in light.roi_heads.modules())


def test_fine_tuning_path_gives_the_frozen_features_with_gradients(test_vit):
    import copy

    vit = copy.deepcopy(test_vit)
    body = ViTDetBackbone(vit, None, out_channels=16, train_backbone=True)
    image = torch.rand(1, 3, 32, 48)
    tokens = body.tokens(image)
    assert torch.allclose(tokens, test_vit(image), atol=1e-5)
    tokens.sum().backward()
    assert vit.model.blocks[0].attn.qkv.weight.grad is not None


def training_step(detector: nn.Module, size: int = 64) -> dict[str, torch.Tensor]:
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, 10:40, 12:50] = 1
    target = {"boxes": torch.tensor([[12.0, 10, 50, 40]]), "labels": torch.tensor([1]), "masks": masks}
    detector.train()
    losses = detector([torch.rand(3, size, size)], [target])
    sum(losses.values()).backward()
    return losses


IMAGE_SIZE = {"naf": 160}  # NAF's 9 x 9 neighbourhood needs >= 9 x 9 tokens (patch 16: 144 px)


@pytest.mark.parametrize("pyramid", ["tconv", *(n for n in list_upsamplers() if n not in SLOW)])
def test_every_pyramid_variant_builds_and_trains_a_step(pyramid, test_vit):
    size = IMAGE_SIZE.get(pyramid, 64)
    model = DetectorModel.from_mapping({"pyramid": pyramid, "freeze": "backbone", **TINY})
    detector = make_detector(model, test_vit, CategoryMap((1, 2)), size)
    losses = training_step(detector, size)
    assert all(torch.isfinite(v) for v in losses.values())
    head = detector.roi_heads.box_predictor.cls_score.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    assert all(p.grad is None for p in test_vit.parameters())


def test_frozen_upsampler_stays_in_eval_mode_without_gradients(test_vit):
    model = DetectorModel.from_mapping({"pyramid": "lift", "freeze": "backbone_upsampler", **TINY})
    detector = make_detector(model, test_vit, CategoryMap((1,)), 64)
    training_step(detector)
    upsampler = detector.backbone.pyramid.upsampler
    assert not upsampler.training and all(p.grad is None for p in upsampler.parameters())
    assert detector.backbone.pyramid.lateral[0][0].weight.grad is not None


def test_an_upsampler_for_another_backbone_is_refused(tmp_path, test_vit):
    other = create_upsampler("lift", 32, 16, image_channels=8)
    save_checkpoint(tmp_path / "step_0000001", other, {"backbone": {"name": "other"}, "step": 1})
    with pytest.raises(ValueError, match="trained on 32-channel features with patch 16"):
        resolve_upsampler(str(tmp_path / "step_0000001"), test_vit)
    model = DetectorModel.from_mapping({"pyramid": str(tmp_path / "step_0000001"), **TINY})
    with pytest.raises(ValueError, match="trained on 32-channel features"):
        make_detector(model, test_vit, CategoryMap((1,)), 64)
    with pytest.raises(ValueError, match="neither a registered upsampler"):
        make_detector(DetectorModel.from_mapping({"pyramid": "no_such_upsampler"}), test_vit, CategoryMap((1,)), 64)
