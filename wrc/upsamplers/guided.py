"""The image-guided network shared by WRC, Converse2D and the transposed-conv ablation.

After the WRC paper's model: a guidance encoder gives image features at the token grid and at 2x;
tokens and image features are fused; an *upsampling layer* lifts the fused features to 2x; the result
is fused with the 2x image features and projected back to C channels. Only the upsampling layer (and,
below, the weights of the output solve) differs between the three registered methods: the paper's
Table 3 ablation.

Deliberate departures from the original, each switchable for ablations:
- GroupNorm instead of BatchNorm (the original trains BatchNorm with batch 4);
- ``feature_skip``: the output adds the bilinearly upsampled input features, and the head starts near
  zero, so an untrained model is (almost exactly) bilinear and training learns a correction (the original
  re-predicts every feature from scratch);
- the prior fed to the layer is bilinear with half-pixel centres, on the layer's own geometry
  (optionally refined by a learned, zero-initialised correction from the guidance);
- ``output_solve``: the network's 2x prediction p is not the output but the prior of a second solve whose
  data are the input features t themselves, argmin_x sum_i wL (t - A x)^2 + sum_n wH (x - p)^2: the output
  is pulled back to consistency with the backbone's tokens (its 2x2 blocks average to them) where the
  weights trust the tokens, and left to the prediction where they do not (edges, mixed tokens). In the
  original, the reverse convolution only lifts the fused features inside the network, where the head after
  it can undo whatever it does; here it also acts on the features the user gets. WRC predicts one wL and
  one wH map shared by all channels from the guidance, Converse2D keeps per-channel scalars, and the
  transposed-conv ablation has no solve.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.blocks import Bottleneck, GuidanceEncoder, fused_width, half_pixel_upsample
from wrc.layers.conv import conv_add_, is_plain_conv
from wrc.layers.guidance import GuidanceNormalize
from wrc.layers.layout import contiguous_nchw
from wrc.layers.norm import eager_cpu_inference
from wrc.upsamplers.base import Upsampler

CL = torch.channels_last


class GuidedReverseNet(Upsampler):
    """Base for the guided 2x networks; subclasses build the upsampling layer in ``make_layer``.

    Args:
        in_channels, patch_size: from the backbone.
        image_channels: width of the guidance encoder (32 in the paper).
        feature_skip: add the bilinear input features to the output (head initialised near zero).
        prior_refine: add a learned, zero-initialised correction to the bilinear prior.
        output_solve: solve the output against the input features with the prediction as prior (see above;
            ignored by networks without a solve).
    """

    scale = 2

    def __init__(self, in_channels: int, patch_size: int, *, image_channels: int = 32, feature_skip: bool = True,
                 prior_refine: bool = False, output_solve: bool = True, **layer_kwargs) -> None:
        super().__init__(in_channels, patch_size)
        k, width = image_channels, fused_width(in_channels, image_channels)
        self.feature_skip = feature_skip
        self.normalize = GuidanceNormalize()
        self.encoder = GuidanceEncoder(k)
        self.fuse = nn.Sequential(Bottleneck(in_channels + k, width), Bottleneck(width, width))
        self.prior_refine = nn.Conv2d(width + k, width, 3, padding=1) if prior_refine else None
        if self.prior_refine is not None:
            nn.init.zeros_(self.prior_refine.weight)
            nn.init.zeros_(self.prior_refine.bias)
        self.layer = self.make_layer(width, k, **layer_kwargs)
        self.output_solver = self.make_output_solver(in_channels, k) if output_solve else None
        self.out = Bottleneck(width + k, in_channels // 2)
        self.head = nn.Conv2d(in_channels // 2, in_channels, 1)
        if feature_skip:  # near zero, not zero: the output starts at bilinear and every layer gets gradients
            nn.init.normal_(self.head.weight, std=1e-3)
            nn.init.zeros_(self.head.bias)
        # conv weights channels-last like the activations (upsample_step): no reorder of every weight on every
        # call; values and state_dict keys unchanged, and load_state_dict copies into this layout. The encoder's
        # GroupNorm keeps channels-last statistics as accurate as NCHW ones (wrc.layers.norm).
        self.to(memory_format=CL)

    def make_layer(self, channels: int, guide_channels: int, **kwargs) -> nn.Module:
        raise NotImplementedError

    def make_output_solver(self, channels: int, guide_channels: int) -> nn.Module | None:
        """The solve of ``output_solve`` at the backbone's width; None: the network has none."""
        return None

    def lift(self, y: torch.Tensor, z: torch.Tensor, guide_2x: torch.Tensor) -> torch.Tensor:
        """(B, C', h, w) -> (B, C', 2h, 2w) with the prior z and the 2x guidance."""
        return self.layer(y, z, guide_2x)

    def solve_output(self, features: torch.Tensor, prediction: torch.Tensor, guide_1x: torch.Tensor,
                     guide_2x: torch.Tensor) -> torch.Tensor:
        """The output step: ``prediction`` (B, C, 2h, 2w) made consistent with ``features`` (B, C, h, w)."""
        return self.output_solver(features, prediction, guide_2x, guide_1x)

    def head_plus(self, hidden: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``self.head(hidden) + skip``; in CPU inference the head's 1x1 convolution is added into ``skip`` as it is
        computed (wrc.layers.conv.conv_add_: no output tensor of its own, one pass over the output less)."""
        head = self.head
        if (is_plain_conv(head) and head.kernel_size == (1, 1) and head.stride == (1, 1) and head.padding == (0, 0)
                and head.dilation == (1, 1) and head.groups == 1 and hidden.dtype == skip.dtype == head.weight.dtype
                and eager_cpu_inference(hidden) and skip.is_contiguous(memory_format=CL)):
            return conv_add_(skip, hidden, head.weight, head.bias)
        return head(hidden) + skip

    def upsample_step(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        guide_size = (h * self.patch_size, w * self.patch_size)
        if image.shape[-2:] != guide_size:  # the guidance at this step's scale
            image = F.interpolate(image, size=guide_size, mode="bilinear", align_corners=False, antialias=True)
        # channels-last throughout: oneDNN's convolutions then skip a layout reorder of every input/output (a 1x1
        # conv at 448 x 448 x 32 is 25x faster channels-last on a 2-core AMD CPU)
        features, image = features.contiguous(memory_format=CL), image.contiguous(memory_format=CL)
        # the encoder can fold the normalisation into its stem, GuidanceEncoder(image, grid, mean, std): as exact, and
        # in its banded CPU inference stage one pass over the image fewer; elsewhere (folded_stem) its different
        # rounding moves outputs of randomised networks by ~1e-5, so there the image is normalised first
        if (type(self.normalize) is GuidanceNormalize and isinstance(self.encoder, GuidanceEncoder)
                and self.encoder.stage_in_bands(image)):
            guide_2x, guide_1x = self.encoder(image, (h, w), self.normalize.mean, self.normalize.std)
        else:
            guide_2x, guide_1x = self.encoder(self.normalize(image), (h, w))
        # every concatenation below then has channels-last inputs only, so it is channels-last itself: a mixed one
        # comes out NCHW and each convolution reading it reorders it again (two or three per concatenation)
        guide_2x, guide_1x = guide_2x.contiguous(memory_format=CL), guide_1x.contiguous(memory_format=CL)
        y = self.fuse(torch.cat([features, guide_1x], dim=1))  # B, C', h, w
        z = half_pixel_upsample(y, 2)  # B, C', 2h, 2w: the prior, on the solve's geometry
        if self.prior_refine is not None:
            z = z + self.prior_refine(torch.cat([z, guide_2x], dim=1))
        x = self.lift(y, z, guide_2x).to(y.dtype).contiguous(memory_format=CL)  # B, C', 2h, 2w
        hidden = self.out(torch.cat([x, guide_2x], dim=1))
        if self.feature_skip:
            out = self.head_plus(hidden, half_pixel_upsample(features, 2))  # B, C, 2h, 2w
        else:
            out = self.head(hidden)
        if self.output_solver is None:
            return contiguous_nchw(out)
        return contiguous_nchw(self.solve_output(features, out, guide_1x, guide_2x).to(out.dtype))
