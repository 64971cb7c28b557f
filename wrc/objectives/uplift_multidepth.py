"""UPLiFT's multi-depth objective: from each level of an image pyramid, upsample step by step to every finer
level and match the backbone's features there.

With the pyramid x, x/2, ..., x/2^D (D = ``down_steps``, 3 in UPLiFT: 448, 224, 112, 56 px), level i = 1..D
starts from F(x / 2^i), guided by the image at that same (input) scale, and takes i 2x steps; the output of
step j is compared with F(x / 2^(i - j)):

    L = sum_{i=1..D} sum_{j=1..i} w_j MSE(U^j(F(x / 2^i), x / 2^i), F(x / 2^(i - j)))

D(D + 1) / 2 terms (6 for UPLiFT), plain MSE, no other regulariser (modern_peers.md section 5.2). An upsampler
with ``iterate(features, image, steps)`` (UPLiFT) gives every step's output from one pass; any other is asked for
each output size in turn. ``step_weights`` (w_j, default all 1) weight the terms by their number of steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wrc.backbone import FrozenBackbone
from wrc.losses import DISTANCES, feature_distance
from wrc.objectives.base import Objective, register_objective
from wrc.upsamplers.base import Upsampler, resize


@register_objective
class UPLiFTMultiDepth(Objective):
    """Args:
    down_steps: pyramid levels below the image (UPLiFT: 3 for DINOv2-S/14, 2 for DINOv3-S+/16).
    step_weights: weight of the terms reached after 1, 2, ... steps; None = 1 for every term.
    distance: "l2" (UPLiFT: MSE), "l1" or "cosine".
    """

    name = "uplift_multidepth"

    def __init__(self, down_steps: int = 3, step_weights: Sequence[float] | None = None,
                 distance: str = "l2") -> None:
        super().__init__()
        if down_steps < 1:
            raise ValueError(f"objective.down_steps must be >= 1 (pyramid levels below the image); got {down_steps}")
        weights = [1.0] * down_steps if step_weights is None else [float(w) for w in step_weights]
        if len(weights) != down_steps or min(weights) < 0:
            raise ValueError(f"objective.step_weights must be {down_steps} non-negative numbers (one per number of "
                             f"steps); got {step_weights}")
        if distance not in DISTANCES:
            raise ValueError(f"objective.distance={distance!r}; expected one of {DISTANCES}")
        self.down_steps, self.step_weights, self.distance = down_steps, weights, distance

    def forward(self, backbone: FrozenBackbone, upsampler: Upsampler, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        unit = backbone.patch_size * 2 ** self.down_steps
        if height % unit or width % unit:
            raise ValueError(f"images of {height}x{width} px: uplift_multidepth needs sides divisible by patch x "
                             f"2^down_steps = {unit} (data.image_size, objective.down_steps), so that every pyramid "
                             "level is exactly half the one above it in tokens")
        pyramid = [images] + [resize(images, (height >> i, width >> i)).clamp(0, 1)
                              for i in range(1, self.down_steps + 1)]
        with torch.no_grad():
            targets = [backbone(level) for level in pyramid]  # level i: grid / 2^i
        losses: dict[str, torch.Tensor] = {}
        total = images.new_zeros(())
        for level in range(1, self.down_steps + 1):
            preds = self._predictions(upsampler, targets[level], pyramid[level], targets[level - 1::-1])
            for steps, (pred, target) in enumerate(zip(preds, targets[level - 1::-1], strict=True), start=1):
                if pred.shape != target.shape:
                    raise ValueError(f"level {level}, step {steps}: the upsampler gave {tuple(pred.shape)} for a "
                                     f"target of {tuple(target.shape)}")
                term = feature_distance(pred.float(), target.float(), self.distance)
                losses[f"loss_level{level}_step{steps}"] = term.detach()
                total = total + self.step_weights[steps - 1] * term
        losses["loss"] = total
        return losses

    @staticmethod
    def _predictions(upsampler: Upsampler, features: torch.Tensor, image: torch.Tensor,
                     targets: list[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs after 1, 2, ... steps, on the grids of ``targets`` (finest last)."""
        iterate = getattr(upsampler, "iterate", None)
        if iterate is None:
            return [upsampler(features, image, output_size=tuple(t.shape[-2:])) for t in targets]
        return iterate(features, image, len(targets))
