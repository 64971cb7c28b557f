"""The report written after training: the fidelity protocol for the trained upsampler and its baselines, and a
figure, on held-out images.

Each method's result is a ResultRecord in ``run_dir/evaluation/fidelity/<name>/result.json`` (so
``python -m evaluation.tables fidelity <run_dir>`` tabulates it); ``run_dir/metrics.json`` gathers their
metrics by name for a quick look. The settings (``evaluate.*`` in config/train.yaml, defaults in
evaluation/report_settings.py) are validated by ``report_settings`` before training starts, not after hours of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from evaluation.protocol import evaluate
from evaluation.protocols.fidelity import FidelitySettings, large_image, load_eval_images
from evaluation.report_settings import ReportSettings
from utils.visualization import comparison_figure, save_figure
from wrc.checkpoint import atomic_write_text
from wrc.extractor import Backbone, DenseFeatureExtractor, attach_source, build_extractor
from wrc.settings import settings_from_mapping
from wrc.upsamplers import Upsampler, list_upsamplers

QUERY = (0.45, 0.55)  # (y, x) of the similarity-map query, in [0, 1)


def report_settings(given: Mapping[str, Any] | None) -> ReportSettings:
    """``evaluate.*`` with defaults filled in; an unknown key, a bad value or an unknown baseline is an error naming
    it (train_wrc.py asks before training starts)."""
    settings = settings_from_mapping(ReportSettings, dict(given or {}), "evaluate")
    unknown = [name for name in settings.baselines if name not in list_upsamplers()]
    if unknown:
        raise ValueError(f"evaluate.baselines: unknown upsampler(s) {unknown}; available: "
                         f"{', '.join(list_upsamplers())}")
    return settings


def fidelity_settings(settings: ReportSettings) -> FidelitySettings:
    return FidelitySettings(root=settings.root, num_images=settings.num_images, image_size=settings.image_size,
                            scale=settings.scale)


@torch.no_grad()
def figure_rows(extractors: Mapping[str, DenseFeatureExtractor], images: torch.Tensor, scale: int) -> list:
    """Per image: PCA and similarity panels of low-res, each extractor's output, and the large-image target (all
    extractors share one backbone)."""
    first = next(iter(extractors.values()))
    device = first.device
    rows = []
    for image in images:
        batch = image[None].to(device)
        low = first.tokens(batch)
        target = first.tokens(large_image(batch, scale))
        maps = {"low-res": low[0]}
        for name, extractor in extractors.items():
            maps[name] = extractor.upsample(low, batch, target.shape[-2:])[0]
        maps[f"backbone at {scale}x"] = target[0]
        rows.append(comparison_figure(image, maps, QUERY))
    return rows


def baseline_extractors(backbone: Backbone, names: Sequence[str]) -> dict[str, DenseFeatureExtractor]:
    return {name: build_extractor(backbone, name) for name in names}


def report_training_run(run_dir: Path, backbone: Backbone, upsampler: Upsampler,
                        cfg: Mapping[str, Any] | ReportSettings, checkpoint: Path | None = None) -> dict[str, Any]:
    """Write the records, ``metrics.json`` (and ``figure.png``) into ``run_dir``; returns paths and metrics.
    ``checkpoint``: the checkpoint ``upsampler`` was saved as, named in its record (so that the trained model of
    each run is its own row in tables)."""
    settings = cfg if isinstance(cfg, ReportSettings) else report_settings(cfg)
    run_dir = Path(run_dir)
    extractors = baseline_extractors(backbone, settings.baselines)
    if checkpoint is not None:
        attach_source(upsampler, checkpoint)
    extractors[upsampler.name] = DenseFeatureExtractor(backbone, upsampler.eval())
    results, records = {}, []
    for name, extractor in extractors.items():
        folder = run_dir / "evaluation" / "fidelity" / name
        record = evaluate("fidelity", extractor, fidelity_settings(settings), folder)
        results[name] = record.metrics
        records.append(str((folder / "result.json").relative_to(run_dir)))
    metrics_path = run_dir / "metrics.json"
    atomic_write_text(metrics_path, json.dumps({"results": results, "records": records, "backbone": backbone.spec(),
                                                "scale": settings.scale, "image_size": settings.image_size}, indent=2))
    out: dict[str, Any] = {"results": results, "metrics": metrics_path}
    if settings.figure:
        images = load_eval_images(settings.root, settings.num_images, settings.image_size)[:3]
        out["figure"] = save_figure(figure_rows(extractors, images, settings.scale), run_dir / "figure.png")
    return out
