"""ViTDet's Mask R-CNN as torchvision modules: a plain ViT, its simple feature pyramid, ViTDet's heads.

The simple feature pyramid (Li et al., ECCV 2022; eval_protocols.md F.1) turns the ViT's one stride-16 map F
(B, C, h, w) into five levels of 256 channels, named as torchvision's FPN names them:

    "0"  p2, stride 4:  ConvT(C, C/2, 2, 2) -> LN -> GELU -> ConvT(C/2, C/4, 2, 2)   | upsampler(F, 4h x 4w)
    "1"  p3, stride 8:  ConvT(C, C/2, 2, 2)                                          | upsampler(F, 2h x 2w)
    "2"  p4, stride 16: F
    "3"  p5, stride 32: MaxPool(2, 2)(F)
    then per level Conv1x1(-> 256) + LN, Conv3x3(256 -> 256) + LN (no biases; LN over channels per position);
    "pool" p6, stride 64: max-pool (kernel 1, stride 2) of p5's output.

With an upsampler (LiFT section 3.5, F.2) p3 and p2 are its image-guided 2x and 4x outputs (C channels) instead
of the learned transposed convolutions ("tconv", the ViTDet baseline); p4 and p5 do not change. Fixed-factor
upsamplers (LiFT, scale 2) reach 4x by one more step on their 2x output, which is exactly what their own 4x does.

Stride policy, for any patch size P: the detector pads its batch to a multiple of 64 pixels (``SIZE_DIVISIBLE``),
and the ViT sees that batch resized by P / 16 (bilinear, antialiased), so its token grid is exactly (H/16, W/16):
every level has the integer stride 4, 8, 16, 32 or 64 of the detector's input frame, which torchvision's anchor
generator assumes (it takes image size // grid size). Patch 16 runs on the image as it is; patch 14 (DINOv2) on
the image shrunk to 7/8 (a 1024 input: 896 px, 64 x 64 tokens); patch 8 on half the image (ViTDet's stride 16,
not the patch-8 model's native stride 8). The upsampler is guided by the full-resolution batch.

Heads (``heads="vitdet"``, ViTDet's): an RPN head with two 3x3 convolutions, a 4conv1fc box head (256-channel
convolutions with LN, one 1024 fc) and a 4-convolution mask head with LN; ``heads="torchvision"``: torchvision's
lighter defaults (one-conv RPN, two-fc box head, mask head without norm). Anchors: one size per level (32 ... 512)
and aspect ratios 0.5, 1, 2. The ViT itself is timm's (global attention in every block, absolute position
embeddings): ViTDet's window attention and relative positions are not rebuilt.

Images enter the detector as floats in [0, 1] (its transform uses mean 0 and std 1): the backbone and the
upsamplers normalise them themselves.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from wrc.upsamplers import Upsampler

FEATURE_STRIDE = 16  # the ViT map is p4, whatever the patch size (module docstring)
LEVELS = ("0", "1", "2", "3", "pool")  # p2 ... p6, as torchvision's MultiScaleRoIAlign and FPN name them
STRIDES = (4, 8, 16, 32, 64)
SIZE_DIVISIBLE = 64  # the padded batch is a multiple of the coarsest stride: every level's stride is exact
ANCHOR_SIZES = (32, 64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
HEADS = ("vitdet", "torchvision")
TCONV = "tconv"


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each position of an NCHW map (ViTDet's "LN")."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def conv_norm(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         LayerNorm2d(out_channels))


class SimpleFeaturePyramid(nn.Module):
    """F (B, C, h, w) at stride 16 -> levels "0" ... "pool" (B, out_channels, ...) at strides 4 ... 64.

    Args:
        in_channels: C, the ViT's channels (divisible by 4 for the transposed-conv branches).
        out_channels: channels of every level (256).
        upsampler: p3/p2 from this upsampler's 2x/4x outputs; None: ViTDet's transposed convolutions.
        train_upsampler: False runs the upsampler frozen (no gradients, always in eval mode).
    """

    def __init__(self, in_channels: int, out_channels: int = 256, upsampler: Upsampler | None = None,
                 train_upsampler: bool = True) -> None:
        super().__init__()
        c = in_channels
        self.upsampler, self.train_upsampler = upsampler, train_upsampler
        if upsampler is None:
            if c % 4:
                raise ValueError(f"the transposed-conv pyramid needs channels divisible by 4; got {c}")
            self.up4 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, stride=2), LayerNorm2d(c // 2), nn.GELU(),
                                     nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2))
            self.up2 = nn.ConvTranspose2d(c, c // 2, 2, stride=2)
            widths = (c // 4, c // 2, c, c)
        else:
            if not train_upsampler:
                upsampler.requires_grad_(False)
            widths = (c, c, c, c)
        self.lateral = nn.ModuleList(conv_norm(w, out_channels, 1) for w in widths)
        self.output = nn.ModuleList(conv_norm(out_channels, out_channels, 3) for _ in widths)

    def train(self, mode: bool = True) -> SimpleFeaturePyramid:
        """A frozen upsampler stays in eval mode (its batch norms keep their statistics)."""
        super().train(mode)
        if self.upsampler is not None and not self.train_upsampler:
            self.upsampler.eval()
        return self

    def upsampled(self, features: torch.Tensor, image: torch.Tensor,
                  backbone: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(p2, p3) inputs: (B, C/4 | C, 4h, 4w) and (B, C/2 | C, 2h, 2w)."""
        if self.upsampler is None:
            return self.up4(features), self.up2(features)
        h, w = features.shape[-2:]
        up = self.upsampler
        with nullcontext() if self.train_upsampler else torch.no_grad():
            x2 = up(features, image, (2 * h, 2 * w), backbone=backbone)
            if up.scale == 2 and not up.needs_backbone:  # one more native step = the method's own 4x
                x4 = up(x2, image, (4 * h, 4 * w), backbone=backbone)
            else:
                x4 = up(features, image, (4 * h, 4 * w), backbone=backbone)
        return x4, x2

    def forward(self, features: torch.Tensor, image: torch.Tensor,
                backbone: nn.Module | None = None) -> OrderedDict[str, torch.Tensor]:
        p2, p3 = self.upsampled(features, image, backbone)
        inputs = (p2, p3, features, F.max_pool2d(features, kernel_size=2, stride=2))
        levels = [out(lateral(x)) for x, lateral, out in zip(inputs, self.lateral, self.output, strict=True)]
        levels.append(F.max_pool2d(levels[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(LEVELS, levels, strict=True))


class ViTDetBackbone(nn.Module):
    """The ViT and its simple feature pyramid as a torchvision detection backbone (``out_channels`` attribute,
    an OrderedDict of levels).

    Args:
        backbone: a wrc FrozenBackbone, or any frozen module with ``embed_dim``, ``patch_size``, ``spec()`` and
            ``forward(image)`` (the synthetic oracle).
        upsampler: p3/p2 from it, or None for the transposed-conv pyramid.
        train_backbone: fine-tune the ViT (a FrozenBackbone with the token facet; its blocks stay in eval mode,
            so without dropout or stochastic depth). False: frozen, run under no_grad.
        train_upsampler: train the upsampler with the detector (False: frozen, LiFT's step 3).
    """

    def __init__(self, backbone: nn.Module, upsampler: Upsampler | None = None, *, out_channels: int = 256,
                 train_backbone: bool = False, train_upsampler: bool = True) -> None:
        super().__init__()
        if train_backbone and (not hasattr(backbone, "model") or getattr(backbone, "facet", "token") != "token"):
            raise ValueError("train_backbone needs a timm FrozenBackbone with facet='token' (the block outputs)")
        self.vit = backbone
        self.patch_size: int = int(backbone.patch_size)
        self.train_backbone = train_backbone
        if train_backbone:
            backbone.model.requires_grad_(True)
        self.pyramid = SimpleFeaturePyramid(backbone.embed_dim, out_channels, upsampler, train_upsampler)
        self.out_channels = out_channels

    def backbone_input(self, images: torch.Tensor) -> torch.Tensor:
        """The batch as the ViT sees it: resized by P / 16, so that its token grid is (H / 16, W / 16)."""
        height, width = images.shape[-2:]
        if height % FEATURE_STRIDE or width % FEATURE_STRIDE:
            raise ValueError(f"images must have sides divisible by {FEATURE_STRIDE} (the detector pads its batch to "
                             f"{SIZE_DIVISIBLE}); got {height} x {width}")
        if self.patch_size == FEATURE_STRIDE:
            return images
        size = (height // FEATURE_STRIDE * self.patch_size, width // FEATURE_STRIDE * self.patch_size)
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                             antialias=self.patch_size < FEATURE_STRIDE)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT map F (B, C, H / 16, W / 16)."""
        x = self.backbone_input(images)
        if not self.train_backbone:
            return self.vit(x)
        vit = self.vit  # FrozenBackbone.forward runs under no_grad: the same features, with gradients
        maps = vit.model.forward_intermediates((x - vit.mean) / vit.std, indices=vit.layers, norm=vit.final_norm,
                                               output_fmt="NCHW", intermediates_only=True)
        return torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.pyramid(self.tokens(images), images, backbone=self.vit)


def build_detector(backbone: nn.Module, upsampler: Upsampler | None, num_classes: int, *, heads: str = "vitdet",
                   image_size: int = 1024, anchor_sizes: tuple[int, ...] | list[int] = ANCHOR_SIZES,
                   out_channels: int = 256, representation_size: int = 1024, train_backbone: bool = False,
                   train_upsampler: bool = True, rois_per_image: int = 512, proposals_per_image: int = 1000,
                   detections_per_image: int = 100) -> MaskRCNN:
    """torchvision's Mask R-CNN on the ViT's simple feature pyramid (module docstring).

    ``num_classes`` counts the background (categories + 1); ``image_size`` is the test size (the longer side,
    as ViTDet's ResizeShortestEdge(1024, max 1024)); training batches of that square size are left unresized.
    ``out_channels`` (the pyramid's and the head convolutions' width, 256), ``representation_size`` (the box
    head's fc, 1024), ``rois_per_image`` (sampled for the box head in training, 512) and ``proposals_per_image``
    (kept by the RPN after NMS, 1000) are ViTDet's by default; tests shrink them.
    """
    if heads not in HEADS:
        raise ValueError(f"heads={heads!r}; expected one of {HEADS}")
    if len(anchor_sizes) != len(LEVELS):
        raise ValueError(f"anchor_sizes needs one size per level {LEVELS}; got {list(anchor_sizes)}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and at least one category; got {num_classes}")
    body = ViTDetBackbone(backbone, upsampler, out_channels=out_channels, train_backbone=train_backbone,
                          train_upsampler=train_upsampler)
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (ASPECT_RATIOS,) * len(LEVELS))
    norm = LayerNorm2d if heads == "vitdet" else None
    if heads == "vitdet":
        box_head: nn.Module = FastRCNNConvFCHead((out_channels, 7, 7), [out_channels] * 4, [representation_size],
                                                 norm_layer=norm)
    else:
        box_head = TwoMLPHead(out_channels * 7 * 7, representation_size)
    kwargs: dict[str, Any] = {
        "rpn_head": RPNHead(out_channels, len(ASPECT_RATIOS), conv_depth=2 if heads == "vitdet" else 1),
        "box_head": box_head,
        "box_predictor": FastRCNNPredictor(representation_size, num_classes),
        "mask_head": MaskRCNNHeads(out_channels, [out_channels] * 4, 1, norm_layer=norm),
        "mask_predictor": MaskRCNNPredictor(out_channels, out_channels, num_classes),
    }
    return MaskRCNN(body, min_size=image_size, max_size=image_size, image_mean=[0.0] * 3, image_std=[1.0] * 3,
                    rpn_anchor_generator=anchors, rpn_post_nms_top_n_train=proposals_per_image,
                    rpn_post_nms_top_n_test=proposals_per_image, box_batch_size_per_image=rois_per_image,
                    size_divisible=SIZE_DIVISIBLE, box_detections_per_img=detections_per_image, **kwargs)


