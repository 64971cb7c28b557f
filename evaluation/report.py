"""The report written after training: fidelity against baselines on held-out images, and a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from evaluation.eval_fidelity import fidelity, load_eval_images, write_result
from utils.visualization import comparison_figure, save_figure
from wrc.backbone import FrozenBackbone
from wrc.upsamplers import Upsampler, create_upsampler

QUERY = (0.45, 0.55)  # (y, x) of the similarity-map query, in [0, 1)


@torch.no_grad()
def figure_rows(backbone: FrozenBackbone, upsamplers: dict[str, Upsampler], images: torch.Tensor,
                scale: int) -> list:
    """Per image: PCA and similarity panels of low-res, each upsampler, and the large-image target."""
    device = next(backbone.buffers()).device
    rows = []
    for image in images:
        batch = image[None].to(device)
        low = backbone(batch)
        large = F.interpolate(batch, scale_factor=scale, mode="bicubic", align_corners=False, antialias=True)
        target = backbone(large.clamp(0, 1))
        maps = {"low-res": low[0]}
        for name, upsampler in upsamplers.items():
            maps[name] = upsampler(low, batch, output_size=target.shape[-2:], backbone=backbone)[0]
        maps[f"backbone at {scale}x"] = target[0]
        rows.append(comparison_figure(image, maps, QUERY))
    return rows


def report_training_run(run_dir: Path, backbone: FrozenBackbone, upsampler: Upsampler,
                        cfg: dict[str, Any]) -> dict[str, Any]:
    """Write ``metrics.json`` (and ``figure.png``) into ``run_dir``; returns their paths and the metrics."""
    images = load_eval_images(cfg.get("root"), int(cfg["num_images"]), int(cfg["image_size"]))
    device = next(backbone.buffers()).device
    upsamplers = {name: create_upsampler(name, backbone.embed_dim, backbone.patch_size).to(device)
                  for name in cfg.get("baselines", ["bilinear"])}
    upsamplers[upsampler.name] = upsampler.eval()
    scale = int(cfg.get("scale", 2))
    results = fidelity(backbone, upsamplers, images, scale)
    out = {"results": results, "metrics": write_result(
        Path(run_dir) / "metrics.json", backbone, results, scale=scale, image_size=int(cfg["image_size"]),
        num_images=len(images), source=cfg.get("root") or "built-in held-out scenes")}
    if cfg.get("figure", True):
        out["figure"] = save_figure(figure_rows(backbone, upsamplers, images[:3], scale), Path(run_dir) / "figure.png")
    return out
