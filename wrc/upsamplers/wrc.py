"""WRC: Weighted Reverse Convolution for feature upsampling (Li, Qi, Zhao, Zhang, Zhang, 2026).

The guided network of ``wrc.upsamplers.guided`` with a weighted reverse convolution at its 2x step:
the lifted features are the exact minimiser of
    sum_i wL[i] (y[i] - (A x)[i])^2 + sum_n wH[n] (x[n] - z[n])^2
with wL predicted from the features and wH from the prior and the guidance image (bounded ranges),
a learned positive, normalised kernel per channel, and the bilinear prior z. Unlike the original
code, the solve is the true minimiser (WRC_MATH.md) with the kernel on the correct geometry.
"""

from __future__ import annotations

from torch import nn

from wrc.layers.reverse_conv import WeightedReverseConv2d
from wrc.upsamplers.base import register_upsampler
from wrc.upsamplers.guided import GuidedReverseNet


@register_upsampler
class WRC(GuidedReverseNet):
    """Args (besides those of GuidedReverseNet):
    kernel_size: k of the forward model (2 = the paper's, exact block solve; > 2 uses PCG).
    iterations, tol: PCG budget for kernel_size > 2.
    w_low_max, w_high_range: bounds of the predicted weights (they bound the solve's conditioning).
    padding, padding_mode: LR cells of padding against FFT wrap-around (kernel_size > 2).
    """

    name = "wrc"

    def make_layer(self, channels: int, guide_channels: int, *, kernel_size: int = 2, iterations: int = 20,
                   tol: float = 1e-4, w_low_max: float = 4.0, w_high_range: tuple[float, float] = (0.05, 4.0),
                   padding: int = 2, padding_mode: str = "replicate") -> nn.Module:
        return WeightedReverseConv2d(channels, guide_channels, scale=2, kernel_size=kernel_size, padding=padding,
                                     padding_mode=padding_mode, w_low_max=w_low_max,
                                     w_high_range=tuple(w_high_range), iterations=iterations, tol=tol)

    def make_output_solver(self, channels: int, guide_channels: int) -> nn.Module:
        """k = s = 2 (exact block solve), one wL map from the tokens and the token-grid guidance, one wH map from
        the prediction and the 2x guidance, both shared by all channels (the tokens' width is the backbone's)."""
        return WeightedReverseConv2d(channels, guide_channels, scale=2, kernel_size=2, weight_maps=1,
                                     low_guide_channels=guide_channels)
