"""DenseFeatureExtractor: the one object every training report, evaluation, benchmark and figure goes through.

``build_extractor(backbone, spec)`` resolves an upsampler spec in one place, with every compatibility
check, so that no consumer builds "backbone then upsampler" on its own. A spec is
- a registered name: ``"bilinear"``;
- a mapping ``{"name": "lift", **constructor kwargs}`` (a ``model=`` config node);
- a checkpoint: a path (step directory, checkpoints/ folder or run directory), or ``{"checkpoint": path}``.
A checkpoint must have been trained on this backbone (same channels and patch size, and the same model,
layer, facet and kind of weights as its metadata records) unless ``allow_backbone_mismatch=True``.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from wrc.checkpoint import load_upsampler, read_checkpoint_meta
from wrc.upsamplers.base import Upsampler, create_upsampler, get_upsampler_class, list_upsamplers

log = logging.getLogger("wrc")

UpsamplerSpec = str | os.PathLike | Mapping[str, Any]
BACKBONE_IDENTITY = ("name", "layer", "facet", "final_norm", "model_args")  # what a checkpoint's features depend on


@runtime_checkable
class Backbone(Protocol):
    """What an extractor needs of a backbone: FrozenBackbone, or any frozen module like the synthetic oracle."""

    embed_dim: int
    patch_size: int

    def spec(self) -> dict[str, Any]: ...

    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...


class DenseFeatureExtractor(nn.Module):
    """Frozen backbone followed by an upsampler: image in [0, 1] -> dense features.

    A new upsampler works in every evaluation the moment it is registered, because evaluations only
    ever call the extractor.
    """

    def __init__(self, backbone: Backbone, upsampler: Upsampler) -> None:
        super().__init__()
        check_compatible(upsampler, backbone)
        self.backbone, self.upsampler = backbone, upsampler

    @property
    def device(self) -> torch.device:
        """Where the backbone's buffers (and so its inputs) live."""
        return _device_of(self.backbone)

    def forward(self, image: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Image (B, 3, H, W) -> features (B, C, H', W'); the upsampler's default size when None."""
        return self.upsample(self.tokens(image), image, output_size)

    @torch.no_grad()
    def tokens(self, image: torch.Tensor) -> torch.Tensor:
        """The backbone's own low-resolution features (B, C, h, w)."""
        return self.backbone(image)

    def upsample(self, tokens: torch.Tensor, image: torch.Tensor,
                 output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Upsample tokens the caller already has (several output sizes from one backbone pass)."""
        return self.upsampler(tokens, image, output_size, backbone=self.backbone)

    def training_info(self) -> dict[str, Any]:
        """How the upsampler was trained, as far as its checkpoint says (empty for untrained methods)."""
        return dict(getattr(self.upsampler, "source", {}).get("training", {}))

    def upsampler_spec(self) -> dict[str, Any]:
        """``{"name", "kwargs", "checkpoint", "step"}``: what a result record says about the upsampler."""
        source = getattr(self.upsampler, "source", {})
        return {"name": self.upsampler.name, "kwargs": dict(self.upsampler.init_kwargs),
                "checkpoint": source.get("checkpoint"), "step": source.get("step")}


def check_compatible(upsampler: Upsampler, backbone: Backbone) -> None:
    """An upsampler built or trained for other channels or another patch size cannot read this backbone."""
    name = backbone.spec().get("name")
    if upsampler.in_channels != backbone.embed_dim and not upsampler.any_backbone:
        raise ValueError(
            f"upsampler {upsampler.name!r} expects {upsampler.in_channels}-channel features but backbone {name} has "
            f"embed_dim={backbone.embed_dim}: use an upsampler checkpoint trained on this backbone, or the backbone "
            "it was trained on"
        )
    if upsampler.patch_size != backbone.patch_size and not upsampler.any_backbone:
        raise ValueError(f"upsampler {upsampler.name!r} was built for patch size {upsampler.patch_size} but backbone "
                         f"{name} has patch size {backbone.patch_size}")


def resolve_upsampler(spec: UpsamplerSpec, backbone: Backbone, *, allow_backbone_mismatch: bool = False) -> Upsampler:
    """An upsampler for ``backbone`` from a spec (module docstring), on the CPU, in eval mode."""
    if isinstance(spec, Mapping):
        spec = dict(spec)
        checkpoint = spec.pop("checkpoint", None)
        if checkpoint:
            return _from_checkpoint(checkpoint, backbone, allow_backbone_mismatch)
        if "name" not in spec:
            raise ValueError(f"an upsampler spec needs 'name' (a registered upsampler) or 'checkpoint'; got {spec}")
        name = spec.pop("name")
        return create_upsampler(name, backbone.embed_dim, backbone.patch_size, **spec).eval()
    if isinstance(spec, str) and spec in list_upsamplers():
        return create_upsampler(spec, backbone.embed_dim, backbone.patch_size).eval()
    if isinstance(spec, (str, os.PathLike)) and (Path(spec).exists() or str(spec).startswith("hf-hub:")):
        return _from_checkpoint(spec, backbone, allow_backbone_mismatch)
    raise ValueError(f"upsampler {str(spec)!r} is neither a registered upsampler ({', '.join(list_upsamplers())}) "
                     "nor an existing checkpoint or run directory")


def build_extractor(backbone: Backbone, spec: UpsamplerSpec, *, device: str | torch.device | None = None,
                    allow_backbone_mismatch: bool = False) -> DenseFeatureExtractor:
    """The extractor for ``backbone`` and an upsampler spec, moved to ``device`` (the backbone's when None)."""
    upsampler = resolve_upsampler(spec, backbone, allow_backbone_mismatch=allow_backbone_mismatch)
    extractor = DenseFeatureExtractor(backbone, upsampler)
    return extractor.to(device if device is not None else _device_of(backbone)).eval()


def _device_of(module: object) -> torch.device:
    if not isinstance(module, nn.Module):
        return torch.device("cpu")
    first = next(itertools.chain(module.buffers(), module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _from_checkpoint(path: str | os.PathLike, backbone: Backbone, allow_mismatch: bool) -> Upsampler:
    meta = read_checkpoint_meta(path)
    agnostic = get_upsampler_class(meta["name"]).any_backbone  # NAF, AnyUp: one checkpoint serves every backbone
    if agnostic:
        log.info("%s is backbone-agnostic: its checkpoint %s (trained on %s) reads %s", meta["name"], path,
                 meta.get("backbone", {}).get("name"), backbone.spec().get("name"))
    elif (meta["in_channels"], meta["patch_size"]) != (backbone.embed_dim, backbone.patch_size):
        raise ValueError(
            f"checkpoint {str(path)!r} was trained on {meta['in_channels']}-channel features with patch "
            f"{meta['patch_size']} ({meta.get('backbone', {}).get('name')}) but backbone "
            f"{backbone.spec().get('name')} has {backbone.embed_dim} channels and patch {backbone.patch_size}"
        )
    differences = [] if agnostic else backbone_differences(meta.get("backbone", {}), backbone.spec())
    if differences and not allow_mismatch:
        raise ValueError(
            f"checkpoint {str(path)!r} was trained on another backbone ({'; '.join(differences)}): its features "
            "would not match. Evaluate it with the backbone it was trained on, or pass allow_backbone_mismatch=true "
            "if this is intended"
        )
    if differences:
        log.warning("checkpoint %s was trained on another backbone (%s): allowed by allow_backbone_mismatch",
                    path, "; ".join(differences))
    return attach_source(load_upsampler(path), path, meta).eval()


def attach_source(upsampler: Upsampler, checkpoint: str | os.PathLike,
                  meta: Mapping[str, Any] | None = None) -> Upsampler:
    """Record on ``upsampler`` the checkpoint it is (path, step, how it was trained), for result records."""
    meta = meta if meta is not None else read_checkpoint_meta(checkpoint)
    config = meta.get("config") or {}
    training = {"objective": (config.get("objective") or {}).get("name"), "step": meta.get("step"),
                "code_version": meta.get("code_version"), "metrics": meta.get("metrics")}
    upsampler.source = {"checkpoint": str(checkpoint), "step": meta.get("step"), "training": training}
    return upsampler


def backbone_differences(trained: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: trained -> current`` for what differs in the identity of two backbone specs (random weights versus
    any real weights counts; two sources of real weights do not)."""
    if not trained:
        return []
    optional = {"model_args": {}}  # spec() leaves out an empty model_args: absent means timm's defaults
    trained = {**optional, **trained} if "name" in trained else trained
    current = {**optional, **current} if "name" in current else current
    differences = [f"{key}: {trained.get(key)!r} -> {current.get(key)!r}" for key in BACKBONE_IDENTITY
                   if key in trained and key in current and not _same(key, trained[key], current[key])]
    if "weights" in trained and "weights" in current:
        if (trained["weights"] == "random") != (current["weights"] == "random"):
            differences.append(f"weights: {trained['weights']!r} -> {current['weights']!r}")
    return differences


def _same(key: str, trained: Any, current: Any) -> bool:
    if key == "name":  # without a pretrained tag on one side, timm's default tag is meant: compare the architectures
        names = [str(v).split("/")[-1] for v in (trained, current)]
        if not all("." in n for n in names):
            names = [n.split(".")[0] for n in names]
        return names[0] == names[1]
    if isinstance(trained, (list, tuple)) or isinstance(current, (list, tuple)):
        return list(trained if isinstance(trained, (list, tuple)) else [trained]) == \
            list(current if isinstance(current, (list, tuple)) else [current])
    return trained == current
