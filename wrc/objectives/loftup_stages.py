"""LoftUp's two training stages (Huang et al., ICCV 2025), from shared/reference/modern_peers.md section 3.2.

Stage 1 (``loftup_stage1``): FeatUp's multi-view reconstruction. The prediction on the 224 px image's pixel grid and
the image get the same jitter (reflect-pad, zoom, crop; wrc.data.jitter); a learned downsampler (a 5 x 5 box blur,
then attention pooling over P x P taps) maps the jittered prediction to the token grid, where it must match the
backbone's features of the jittered image after a fresh random projection to 64 unit directions (MSE, averaged over
4 jitters); plus the total variation of the first view's projected squared norm, and the SAM-mask term.

Stage 2 (``loftup_stage2``): self-distillation from an EMA teacher. A size s is drawn per step (224 ... 518); the
student upsamples the image resized to s to s x s. For each of 2 random s x s crops of the full image (offsets on
a 16 px lattice), the teacher upsamples the crop itself to s x s (a view magnified H / s times) and its output,
resized to the student's window on that crop, supervises the window's cosine affinities (Gram MSE over the central
80 %, weight 20); plus multi-view reconstruction with FeatUp's learned uncertainty and TV on the raw features.
The teacher is an EMA of the student (beta 0.99, every 10 steps, from step 0), created from the student's weights
when training starts (the upstream fix: the indexed script dropped the teacher when given stage-1 weights).

SAM masks. Both stages use precomputed SAM masks (SA-1B ships them): stage 1 regresses the prediction on the
bicubically upsampled features with each mask's pixels pulled 80 % toward the mask mean (``mask_weight`` 1 in the
paper), stage 2 refines the teacher's output the same way with 50 %. ``forward(..., masks=)`` takes them as a
(B, M, H, W) map per image (value > 0 inside, later masks overwrite earlier ones, padding masks all zero), which
the image-folder data delivers from SA-1B's mask files with ``data.masks_root`` (wrc.data.masks: each mask through the
image's crop), and the synthetic benchmark's scenes from their regions. Without masks the terms have weight 0 (the
default, logged at setup); a mask weight without masks is an error before training starts.

Where the framework differs: jitters zoom in [1, 1 + max_zoom] (FeatUp's jitter) where LoftUp draws a zoom in
[0.9, 1.1] per axis; the random projection is drawn per jitter; the teacher's output is resized to the student's
window with antialiasing, and the window is rounded to whole pixels (s^2 / H is fractional for s = 518).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wrc.backbone import FrozenBackbone
from wrc.data.jitter import apply_jitter, sample_jitter
from wrc.layers.downsamplers import AttentionDownsampler
from wrc.layers.uncertainty import ScaleNet
from wrc.losses import gaussian_nll, total_variation
from wrc.objectives.base import Objective, register_objective
from wrc.upsamplers.base import Upsampler, resize

log = logging.getLogger("wrc")


def random_projection(batch: int, channels: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """(B, C, dim) Gaussian directions with unit-length columns."""
    p = torch.randn(batch, channels, dim, device=like.device, dtype=like.dtype)
    return p / p.norm(dim=1, keepdim=True)


def project(x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) maps through (B, C, dim) directions -> (B, dim, H, W)."""
    return torch.einsum("bchw,bcd->bdhw", x, projection)


def mask_blend(features: torch.Tensor, masks: torch.Tensor, alpha: float) -> torch.Tensor:
    """LoftUp's SAM pseudo-target: inside each mask, (1 - alpha) f + alpha mean_mask(f); later masks win.

    Args:
        features: (B, C, H, W).
        masks: (B, M, H, W), a pixel is inside mask m where masks[:, m] > 0 (all-zero or -1 padding never wins).
        alpha: the weight of the mask mean (0.8 in stage 1, 0.5 in stage 2).
    """
    if masks.shape[0] != features.shape[0] or masks.shape[-2:] != features.shape[-2:] or masks.dim() != 4:
        raise ValueError(f"masks must be (B={features.shape[0]}, M, {features.shape[-2]}, {features.shape[-1]}); "
                         f"got {tuple(masks.shape)}")
    if masks.shape[1] == 0:
        return features
    inside = (masks > 0).to(features.dtype)
    means = torch.einsum("bmhw,bchw->bmc", inside, features) / inside.sum(dim=(2, 3)).clamp_min(1)[..., None]
    order = torch.arange(1, masks.shape[1] + 1, device=features.device, dtype=features.dtype).view(1, -1, 1, 1)
    last = (inside * order).amax(dim=1).long()  # B, H, W: the last mask holding each pixel, 0 for none
    mean_map = torch.gather(means, 1, (last.clamp_min(1) - 1).flatten(1)[..., None].expand(-1, -1, means.shape[2]))
    mean_map = mean_map.transpose(1, 2).reshape(features.shape)  # B, C, H, W
    return torch.where(last[:, None] > 0, (1 - alpha) * features + alpha * mean_map, features)


def gram_affinity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the cosine Gram matrices of two (B, C, H, W) maps over their H W positions.

    Computed as (|A A^T|^2 - 2 |A B^T|^2 + |B B^T|^2) / N^2 with the C x C products of the normalised (C, N)
    maps, which equals the N x N form exactly without building it (N = 89,401 for LoftUp's 518 px step). Always in
    float32 or wider: under fp16 autocast the C x C sums (up to N) and their squares would overflow."""
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} maps must match")
    dtype = torch.promote_types(student.dtype, torch.float32)
    with torch.autocast(student.device.type, enabled=False):
        a, b = (F.normalize(x.flatten(2).to(dtype), dim=1) for x in (student, teacher))  # B, C, N
        n = a.shape[-1]
        aa, ab, bb = a @ a.transpose(1, 2), a @ b.transpose(1, 2), b @ b.transpose(1, 2)  # B, C, C
        return ((aa.square().sum((1, 2)) - 2 * ab.square().sum((1, 2)) + bb.square().sum((1, 2))) / n**2).mean()


def central(x: torch.Tensor, border: float) -> torch.Tensor:
    """The map without a ``border`` fraction of its height and width on every side."""
    top, left = int(border * x.shape[-2]), int(border * x.shape[-1])
    return x[..., top:x.shape[-2] - top, left:x.shape[-1] - left]


class BlurredAttentionDownsampler(nn.Module):
    """LoftUp's (FeatUp's) downsampler: a box blur, then attention pooling of P x P taps per token."""

    def __init__(self, channels: int, kernel_size: int, blur: int = 5, dropout: float = 0.2) -> None:
        super().__init__()
        if blur < 1 or blur % 2 == 0:
            raise ValueError(f"objective.blur must be odd and >= 1 pixels; got {blur}")
        self.blur = blur
        self.attention = AttentionDownsampler(channels, kernel_size, dropout=dropout, position_dropout=0.0)

    def forward(self, hr: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.blur > 1:
            hr = F.avg_pool2d(F.pad(hr, [self.blur // 2] * 4, mode="replicate"), self.blur, stride=1)
        return self.attention(hr, grid)


class MultiviewTerms(Objective):
    """What both stages share: the jittered-view reconstruction, its downsampler and the SAM-mask settings."""

    def __init__(self, num_jitters: int, max_pad: int, max_zoom: float, projection_dim: int, blur: int,
                 mask_weight: float, mask_alpha: float) -> None:
        super().__init__()
        if num_jitters < 1 or projection_dim < 1:
            raise ValueError(f"objective.num_jitters and objective.projection_dim must be >= 1; got {num_jitters}, "
                             f"{projection_dim}")
        if mask_weight < 0 or not 0 <= mask_alpha <= 1:
            raise ValueError(f"objective.mask_weight must be >= 0 and objective.mask_alpha in [0, 1]; got "
                             f"{mask_weight}, {mask_alpha}")
        self.num_jitters, self.max_pad, self.max_zoom = num_jitters, max_pad, max_zoom
        self.projection_dim, self.blur = projection_dim, blur
        self.mask_weight, self.mask_alpha = mask_weight, mask_alpha
        self.downsampler: nn.Module | None = None

    def setup(self, backbone: FrozenBackbone) -> None:
        self.downsampler = BlurredAttentionDownsampler(backbone.embed_dim, backbone.patch_size, self.blur)
        if self.uses_masks:
            log.info("%s: the SAM-mask term is on (weight %g, alpha %g) with the masks the data delivers", self.name,
                     self.mask_weight, self.mask_alpha)
        else:
            log.info("%s: the SAM-mask term is off (weight 0): LoftUp trains with SA-1B's masks; to use them pass "
                     "data.masks_root=<folder of SA-1B mask JSONs> objective.mask_weight=1", self.name)

    @property
    def uses_masks(self) -> bool:
        return self.mask_weight > 0 and self.mask_alpha > 0

    def check_masks(self, masks: torch.Tensor | None) -> None:
        if self.uses_masks and masks is None:
            raise ValueError(f"objective {self.name!r} has a SAM-mask term (mask_weight={self.mask_weight}) but no "
                             "masks were given: pass data.masks_root=<folder of SA-1B mask JSONs> (forward(..., "
                             "masks=) in code) or set objective.mask_weight=0")

    def reconstruction(self, backbone: FrozenBackbone, hr: torch.Tensor, images: torch.Tensor,
                       scale_net: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean over jitters of the projected reconstruction loss, the first jittered view projected)."""
        if self.downsampler is None:
            self.setup(backbone)
            self.to(images.device)
        loss, first = hr.new_zeros(()), None
        for _ in range(self.num_jitters):
            jitter = sample_jitter(*images.shape[-2:], self.max_pad, self.max_zoom, flips=False)
            with torch.no_grad():
                target = backbone(apply_jitter(images, jitter)).float()
            grid = tuple(target.shape[-2:])
            view = apply_jitter(hr, jitter)
            if view.shape[-2] % grid[0] or view.shape[-1] % grid[1]:  # backbones that resize: land on P x grid
                view = F.interpolate(view, size=(grid[0] * backbone.patch_size, grid[1] * backbone.patch_size),
                                     mode="bilinear", align_corners=False)
            projection = random_projection(hr.shape[0], hr.shape[1], self.projection_dim, hr)
            pred = project(self.downsampler(view, grid), projection)
            scale = scale_net(target) if scale_net is not None else None
            loss = loss + gaussian_nll(pred, project(target, projection), scale).clamp_min(0) / self.num_jitters
            if first is None:
                first = project(view, projection)
        return loss, first


@register_objective
class LoftUpStage1(MultiviewTerms):
    """Args:
    num_jitters: views per step (LoftUp: 4); max_pad, max_zoom: jitter ranges (LoftUp: 8 px, about 1.1).
    projection_dim: random projection size (LoftUp: 64).
    blur: box blur before the attention downsampler, in pixels (LoftUp: 5).
    tv_weight: total variation of the first view's projected squared norm (LoftUp's command: 0.001).
    mask_weight: the SAM-mask term (LoftUp: 1 with SA-1B masks; 0 by default: masks need data.masks_root).
    mask_alpha: the mask mean's share in the pseudo-target (LoftUp: 0.8).
    """

    name = "loftup_stage1"

    def __init__(self, num_jitters: int = 4, max_pad: int = 8, max_zoom: float = 1.1, projection_dim: int = 64,
                 blur: int = 5, tv_weight: float = 0.001, mask_weight: float = 0.0, mask_alpha: float = 0.8) -> None:
        super().__init__(num_jitters, max_pad, max_zoom, projection_dim, blur, mask_weight, mask_alpha)
        if tv_weight < 0:
            raise ValueError(f"objective.tv_weight must be >= 0; got {tv_weight}")
        self.tv_weight = tv_weight

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor,
                masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self.check_masks(masks)
        with torch.no_grad():
            low = backbone(images)
        hr = upsampler(low, images, output_size=images.shape[-2:]).float()  # B, C, H, W on the pixel grid
        reconstruction, first = self.reconstruction(backbone, hr, images)
        tv = total_variation(first.square().sum(dim=1))
        losses = {"loss_reconstruction": reconstruction.detach(), "loss_tv": tv.detach()}
        total = reconstruction + self.tv_weight * tv
        if self.uses_masks:
            target = mask_blend(resize(low.float(), hr.shape[-2:], mode="bicubic"), masks, self.mask_alpha)
            projection = random_projection(hr.shape[0], hr.shape[1], self.projection_dim, hr)
            mask_loss = F.mse_loss(project(hr, projection), project(target, projection))
            losses["loss_mask"] = mask_loss.detach()
            total = total + self.mask_weight * mask_loss
        losses["loss"] = total
        return losses


@register_objective
class LoftUpStage2(MultiviewTerms):
    """Args:
    sizes: student sizes drawn per step (LoftUp: 224, 336, 448, 518 for DINOv2; 512 in place of 518 for others).
    num_crops: teacher crops per step (LoftUp: 2); crop_align: crop offsets are multiples of this (16 px).
    hr_weight: the Gram-affinity term (LoftUp: 20); border: share of each side left out of it (0.1).
    ema_decay, ema_every: the teacher's EMA (LoftUp: 0.99, every 10 steps).
    num_jitters, max_pad, max_zoom, projection_dim, blur: the reconstruction term, with FeatUp's learned
        uncertainty (as in stage 1; LoftUp's stage 2 jitters twice); reconstruction_weight: its weight (1).
    tv_weight: total variation of the raw prediction (LoftUp: 0.05).
    mask_weight, mask_alpha: SAM refinement of the teacher's output (LoftUp: alpha 0.5); any mask_weight > 0 turns
        it on (masks then required).
    init_from: a stage-1 checkpoint (run directory, checkpoints/ folder or step directory) loaded into the student
        when training starts (not on resume): LoftUp's stage 2 starts from stage 1's weights.
    """

    name = "loftup_stage2"

    def __init__(self, sizes: Sequence[int] = (224, 336, 448, 518), num_crops: int = 2, crop_align: int = 16,
                 hr_weight: float = 20.0, border: float = 0.1, ema_decay: float = 0.99, ema_every: int = 10,
                 num_jitters: int = 2, max_pad: int = 8, max_zoom: float = 1.1, projection_dim: int = 64,
                 blur: int = 5, reconstruction_weight: float = 1.0, tv_weight: float = 0.05,
                 mask_weight: float = 0.0, mask_alpha: float = 0.5, init_from: str | None = None) -> None:
        super().__init__(num_jitters, max_pad, max_zoom, projection_dim, blur, mask_weight, mask_alpha)
        if not sizes or min(sizes) < 1 or num_crops < 1 or crop_align < 1 or ema_every < 1:
            raise ValueError(f"objective.sizes must be positive sizes and num_crops, crop_align, ema_every >= 1; got "
                             f"{list(sizes)}, {num_crops}, {crop_align}, {ema_every}")
        if not 0 <= border < 0.5 or not 0 <= ema_decay <= 1 or min(hr_weight, reconstruction_weight, tv_weight) < 0:
            raise ValueError("objective.border must be in [0, 0.5), ema_decay in [0, 1] and the weights >= 0")
        self.sizes, self.num_crops, self.crop_align = [int(s) for s in sizes], num_crops, crop_align
        self.hr_weight, self.border, self.ema_decay, self.ema_every = hr_weight, border, ema_decay, ema_every
        self.reconstruction_weight, self.tv_weight, self.init_from = reconstruction_weight, tv_weight, init_from
        self.scale_net: nn.Module | None = None
        self.teacher: Upsampler | None = None
        self._pending_teacher: dict[str, torch.Tensor] | None = None
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # forward passes in training, checkpointed

    def setup(self, backbone: FrozenBackbone) -> None:
        super().setup(backbone)
        self.scale_net = ScaleNet(backbone.embed_dim)

    # -- the EMA teacher --------------------------------------------------------------------------------------------

    def start(self, upsampler: Upsampler) -> None:
        """At the first forward: the stage-1 weights into the student (fresh runs only), the teacher from them."""
        if self.teacher is not None:
            return
        if self.init_from and int(self.steps) == 0 and self._pending_teacher is None:
            from wrc.checkpoint import load_upsampler  # lazily: the checkpoint module builds upsamplers

            source = load_upsampler(self.init_from)
            if source.name != upsampler.name:
                raise ValueError(f"objective.init_from={self.init_from!r} holds a {source.name!r} model, not "
                                 f"{upsampler.name!r}")
            upsampler.load_state_dict(source.state_dict())
            log.info("loftup_stage2: student initialised from %s", self.init_from)
        elif not self.init_from and int(self.steps) == 0:
            log.warning("loftup_stage2 starts from the model's random initialisation: LoftUp's stage 2 starts from "
                        "stage 1 (objective.init_from=outputs/loftup_stage1/<run>)")
        teacher = copy.deepcopy(upsampler).requires_grad_(False).eval()
        if self._pending_teacher is not None:
            teacher.load_state_dict(self._pending_teacher)
            self._pending_teacher = None
        self.teacher = teacher

    @torch.no_grad()
    def update_teacher(self, upsampler: Upsampler) -> None:
        """teacher = decay teacher + (1 - decay) student, over every float tensor of the state (BatchNorm statistics
        too); integer buffers are copied."""
        student = upsampler.state_dict()
        for key, value in self.teacher.state_dict().items():
            if value.is_floating_point():
                value.mul_(self.ema_decay).add_(student[key].detach().to(value.dtype), alpha=1 - self.ema_decay)
            else:
                value.copy_(student[key])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """A resumed run's teacher is created at the first forward (it copies the student): keep its weights until
        then."""
        if self.teacher is None:
            teacher = {k.removeprefix("teacher."): v for k, v in state_dict.items() if k.startswith("teacher.")}
            self._pending_teacher = teacher or None
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("teacher.")}
        return super().load_state_dict(state_dict, strict, assign)

    # -- the loss ---------------------------------------------------------------------------------------------------

    def crop_offsets(self, height: int, width: int, size: int) -> tuple[int, int]:
        """A random top-left corner of a size x size crop, rounded down to the crop lattice."""
        top = int(torch.randint(0, height - size + 1, ())) // self.crop_align * self.crop_align
        left = int(torch.randint(0, width - size + 1, ())) // self.crop_align * self.crop_align
        return top, left

    def affinity(self, backbone: FrozenBackbone, hr: torch.Tensor, images: torch.Tensor, size: int,
                 masks: torch.Tensor | None) -> torch.Tensor:
        """Mean over crops of the Gram MSE between the student's window and the teacher's upsampled crop."""
        (height, width), loss = images.shape[-2:], hr.new_zeros(())
        for _ in range(self.num_crops):
            top, left = self.crop_offsets(height, width, size)
            crop = images[..., top:top + size, left:left + size]
            with torch.no_grad():
                target = self.teacher(backbone(crop), crop, output_size=(size, size)).float()
                if self.uses_masks:
                    target = mask_blend(target, masks[..., top:top + size, left:left + size], self.mask_alpha)
            y0, x0 = round(top * size / height), round(left * size / width)
            wh, ww = max(1, round(size * size / height)), max(1, round(size * size / width))
            window = hr[..., y0:y0 + wh, x0:x0 + ww]
            target = resize(target, tuple(window.shape[-2:]))
            loss = loss + gram_affinity_loss(central(window, self.border), central(target, self.border))
        return loss / self.num_crops

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor,
                masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self.check_masks(masks)
        if max(self.sizes) > min(images.shape[-2:]):  # every size, at the first step and before any state changes
            raise ValueError(f"objective.sizes holds {max(self.sizes)}, larger than the {tuple(images.shape[-2:])} "
                             "training images (LoftUp crops s x s views of an 896 px image: raise data.image_size)")
        if self.scale_net is None:
            self.setup(backbone)
            self.to(images.device)
        self.start(upsampler)
        self.teacher.eval()
        if self.training:
            if int(self.steps) % self.ema_every == 0:
                self.update_teacher(upsampler)
            self.steps += 1
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        student = resize(images, (size, size)).clamp(0, 1)
        with torch.no_grad():
            low = backbone(student)
        hr = upsampler(low, student, output_size=(size, size)).float()
        affinity = self.affinity(backbone, hr, images, size, masks)
        reconstruction, _ = self.reconstruction(backbone, hr, student, self.scale_net)
        tv = total_variation(hr)
        total = self.hr_weight * affinity + self.reconstruction_weight * reconstruction + self.tv_weight * tv
        return {"loss": total, "loss_affinity": affinity.detach(), "loss_reconstruction": reconstruction.detach(),
                "loss_tv": tv.detach()}
