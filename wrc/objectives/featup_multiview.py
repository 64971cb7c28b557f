"""FeatUp's multi-view reconstruction objective (Fu, Hamilton et al., ICLR 2024).

The upsampler predicts features F_hr on the image's pixel grid. For each of ``num_jitters`` random
geometric jitters t (pad, zoom, crop, flip; wrc.data.jitter), the backbone sees t(image) and gives a
low-resolution view f(t(x)); the same t applied to F_hr and a learned downsampler must reproduce it:

    L_rec = mean[ |P^T (f(t(x)) - down(t(F_hr)))|^2 / (2 s^2) + log s ],   s = exp(scale_net(f(t(x))) + 0.1)

a Gaussian likelihood whose per-token scale s lets the model discount views it cannot explain, with
P a fresh random projection to ``projection_dim`` unit directions (Johnson-Lindenstrauss: the
projected error is an unbiased, scaled estimate of the full one, at a fraction of the cost).
Optional regularisers: total variation of |F_hr|^2 and a magnitude term (the pooled |t(F_hr)| must
match |f(t(x))|). The downsampler and the scale head are trained with the upsampler.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wrc.backbone import FrozenBackbone
from wrc.data.jitter import apply_jitter, sample_jitter
from wrc.layers.downsamplers import create_downsampler
from wrc.layers.uncertainty import ScaleNet
from wrc.losses import gaussian_nll, total_variation
from wrc.objectives.base import Objective, register_objective
from wrc.upsamplers.base import Upsampler


def random_projection(batch: int, channels: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """(B, C, dim) Gaussian directions with unit-length columns."""
    p = torch.randn(batch, channels, dim, device=like.device, dtype=like.dtype)
    return p / p.norm(dim=1, keepdim=True)


@register_objective
class FeatUpMultiview(Objective):
    """Args:
    num_jitters: views per batch (FeatUp: 5).
    max_pad, max_zoom, flips: jitter ranges (FeatUp JBU training: 20, 2, on).
    downsampler: "attention" or "simple"; downsampler_kernel: window in pixels (None = the patch size).
    projection_dim: random projection size (FeatUp: 30); None compares all channels.
    uncertainty: learn the per-token scale (Gaussian likelihood); False = plain MSE.
    tv_weight: total variation of |F_hr|^2 (FeatUp JBU: 0).
    magnitude_weight: MSE between pooled |t(F_hr)| and |f(t(x))|, relative to the target's mean norm.
    """

    name = "featup_multiview"

    def __init__(self, num_jitters: int = 5, max_pad: int = 20, max_zoom: float = 2.0, flips: bool = True,
                 downsampler: str = "attention", downsampler_kernel: int | None = None,
                 projection_dim: int | None = 30, uncertainty: bool = True, tv_weight: float = 0.0,
                 magnitude_weight: float = 0.0) -> None:
        super().__init__()
        if num_jitters < 1:
            raise ValueError(f"objective.num_jitters must be >= 1; got {num_jitters}")
        if downsampler not in ("attention", "simple"):
            raise ValueError(f"objective.downsampler={downsampler!r}; expected 'attention' or 'simple'")
        if projection_dim is not None and projection_dim < 1:
            raise ValueError(f"objective.projection_dim must be >= 1 or None; got {projection_dim}")
        if min(tv_weight, magnitude_weight) < 0:
            raise ValueError("objective.tv_weight and objective.magnitude_weight must be >= 0")
        self.num_jitters, self.max_pad, self.max_zoom, self.flips = num_jitters, max_pad, max_zoom, flips
        self.downsampler_name, self.downsampler_kernel = downsampler, downsampler_kernel
        self.projection_dim, self.uncertainty = projection_dim, uncertainty
        self.tv_weight, self.magnitude_weight = tv_weight, magnitude_weight
        self.downsampler: nn.Module | None = None
        self.scale_net: nn.Module | None = None

    def setup(self, backbone: FrozenBackbone) -> None:
        """Build the learned downsampler and scale head for this backbone's channels and patch size."""
        kernel = self.downsampler_kernel or backbone.patch_size
        self.downsampler = create_downsampler(self.downsampler_name, backbone.embed_dim, kernel)
        self.scale_net = ScaleNet(backbone.embed_dim) if self.uncertainty else None

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.downsampler is None:
            self.setup(backbone)
            self.to(images.device)
        with torch.no_grad():
            low = backbone(images)
        hr = upsampler(low, images, output_size=images.shape[-2:]).float()  # B, C, H, W on the pixel grid
        reconstruction = hr.new_zeros(())
        magnitude = hr.new_zeros(())
        for _ in range(self.num_jitters):
            jitter = sample_jitter(*images.shape[-2:], self.max_pad, self.max_zoom, self.flips)
            with torch.no_grad():
                target = backbone(apply_jitter(images, jitter))
            grid = tuple(target.shape[-2:])
            view = apply_jitter(hr, jitter)
            if view.shape[-2] % grid[0] or view.shape[-1] % grid[1]:  # backbones that resize: land on P x grid
                view = F.interpolate(view, size=(grid[0] * backbone.patch_size, grid[1] * backbone.patch_size),
                                     mode="bilinear", align_corners=False)
            pred = self.downsampler(view, grid)
            scale = self.scale_net(target) if self.scale_net is not None else None
            if self.projection_dim is not None:
                proj = random_projection(pred.shape[0], pred.shape[1], self.projection_dim, pred)
                pred, target_p = (torch.einsum("bchw,bcd->bdhw", t, proj) for t in (pred, target))
            else:
                target_p = target
            reconstruction = reconstruction + gaussian_nll(pred, target_p, scale) / self.num_jitters
            if self.magnitude_weight:
                pooled = F.adaptive_avg_pool2d(view.norm(dim=1, keepdim=True), grid)
                norms = target.norm(dim=1, keepdim=True)
                magnitude = magnitude + ((pooled - norms) / norms.mean()).square().mean() / self.num_jitters
        losses = {"loss_reconstruction": reconstruction.detach()}
        total = reconstruction
        if self.tv_weight:
            tv = total_variation(hr.square().mean(dim=1))
            losses["loss_tv"] = tv.detach()
            total = total + self.tv_weight * tv
        if self.magnitude_weight:
            losses["loss_magnitude"] = magnitude.detach()
            total = total + self.magnitude_weight * magnitude
        losses["loss"] = total
        return losses
