"""torch.hub entry points: one per learned upsampler of the registry, and ``upsampler(name_or_path, ...)``.

    import torch
    # trained weights (a hub repo or a local run) on the backbone they were trained on, ready to call on images:
    extractor = torch.hub.load("<org>/wrc", "upsampler", "hf-hub:<org>/<name>")
    extractor = torch.hub.load("/path/to/wrc", "upsampler", "outputs/<run>", source="local")
    # a fresh (untrained) LiFT for DINOv2 ViT-S/14, or the bare upsampler of a checkpoint:
    extractor = torch.hub.load("/path/to/wrc", "lift", backbone="dinov2_vits14", source="local")
    up = torch.hub.load("/path/to/wrc", "wrc", pretrained="hf-hub:<org>/<name>", extractor=False, source="local")
    features = extractor(image)  # image (B, 3, H, W) RGB in [0, 1] -> dense features (B, C, H', W')

Each entry returns a ``wrc.DenseFeatureExtractor`` (frozen backbone + upsampler) or, with ``extractor=False``, the
bare upsampler. ``backbone``: a group of config/backbone/ (``dinov2_vits14``), any timm ViT name, a mapping of
``wrc.FrozenBackbone``'s arguments or a built backbone; a checkpoint's default is the backbone it was trained on
(its metadata), otherwise ``dinov2_vits14``. ``weights`` replaces the backbone's weights (``"pretrained"``,
``"random"`` or a checkpoint file). Importing this file costs torch and the upsampler registry (to name the entries);
timm and huggingface_hub are imported by the first call.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch.hub lists every public callable of this module: no classes imported at run time
    import os
    from collections.abc import Mapping
    from typing import Any

dependencies = ["torch", "timm", "safetensors", "huggingface_hub", "yaml"]

_BACKBONE_GROUP = pathlib.Path(__file__).resolve().parent / "config" / "backbone"
_DEFAULT_BACKBONE = "dinov2_vits14"
_RELEASED: dict[tuple[str, str], str] = {}  # (upsampler, backbone group) -> "hf-hub:<org>/<name>" once published


def upsampler(name_or_path: str | os.PathLike, backbone: Any = None, *, weights: str | None = None,
              extractor: bool = True, device: Any = None, allow_backbone_mismatch: bool = False, **kwargs: Any):
    """Any upsampler: a registered name (``"lift"``, ``"bilinear"``; ``kwargs`` go to its constructor), a local
    checkpoint (step directory, checkpoints/ folder or run directory) or a hub id ``"hf-hub:<org>/<name>[@rev]"``.

    Returns a ``DenseFeatureExtractor`` on ``backbone`` (module docstring), or the bare upsampler when
    ``extractor=False``. A checkpoint trained on another backbone is refused unless ``allow_backbone_mismatch``.
    """
    return _build(name_or_path, None, backbone, weights, extractor, device, allow_backbone_mismatch, kwargs)


def _build(source: Any, entry: str | None, backbone: Any, weights: str | None, extractor: bool, device: Any,
           allow_backbone_mismatch: bool, kwargs: dict):
    from wrc.checkpoint import load_upsampler, read_checkpoint_meta
    from wrc.extractor import attach_source, build_extractor, resolve_upsampler
    from wrc.hub import is_hub_id
    from wrc.upsamplers import list_upsamplers

    if isinstance(source, str) and source in list_upsamplers():
        spec, trained_on = {"name": source, **kwargs}, None
    elif not is_hub_id(source) and not pathlib.Path(source).exists():
        raise ValueError(f"{str(source)!r} is neither a registered upsampler ({', '.join(list_upsamplers())}), an "
                         "existing checkpoint or run directory, nor a hub id 'hf-hub:<org>/<name>[@revision]'")
    else:
        meta = read_checkpoint_meta(source)
        if entry is not None and meta["name"] != entry:
            raise ValueError(f"pretrained={str(source)!r} is a {meta['name']!r} checkpoint, not {entry!r}: load it "
                             f"with the {meta['name']!r} entry or with 'upsampler'")
        if kwargs:
            raise TypeError(f"upsampler arguments {sorted(kwargs)} cannot be combined with a checkpoint "
                            f"({str(source)!r} holds its own constructor arguments)")
        if not extractor:
            return attach_source(load_upsampler(source), source, meta).to(device or "cpu")
        spec, trained_on = {"checkpoint": source}, meta.get("backbone")
    if not extractor:  # the dimensions do not depend on the weights: never download them for this
        return resolve_upsampler(spec, _backbone(backbone, "random", None)).to(device or "cpu")
    return build_extractor(_backbone(backbone, weights, trained_on), spec, device=device,
                           allow_backbone_mismatch=allow_backbone_mismatch)


def _backbone(backbone: Any, weights: str | None, trained_on: Mapping[str, Any] | None):
    """A FrozenBackbone from an entry's ``backbone`` argument (module docstring); a built module is used as is."""
    from collections.abc import Mapping

    import torch

    from wrc.backbone import FrozenBackbone

    if isinstance(backbone, torch.nn.Module):
        return backbone
    if backbone is None:
        spec = dict(trained_on) if trained_on else _group(_DEFAULT_BACKBONE)
    elif isinstance(backbone, Mapping):
        spec = dict(backbone)
    elif isinstance(backbone, str):
        spec = _group(backbone) if (_BACKBONE_GROUP / f"{backbone}.yaml").is_file() else {"name": backbone}
    else:
        raise TypeError(f"backbone must be a config/backbone group name, a timm model name, a mapping or a module; "
                        f"got {type(backbone).__name__}")
    if weights is not None:
        spec["weights"] = weights
    if "name" not in spec:
        raise ValueError(f"a backbone mapping needs 'name' (a timm model); got keys {sorted(spec)}")
    return FrozenBackbone(spec.pop("name"), **spec)


def _group(name: str) -> dict:
    import yaml

    return yaml.safe_load((_BACKBONE_GROUP / f"{name}.yaml").read_text())


def _entry(name: str):
    """The entry point of the registered upsampler ``name``."""

    def entry(backbone: Any = None, *, pretrained: bool | str | os.PathLike = False, weights: str | None = None,
              extractor: bool = True, device: Any = None, allow_backbone_mismatch: bool = False, **kwargs: Any):
        if pretrained is True:
            group = backbone if isinstance(backbone, str) else _DEFAULT_BACKBONE
            pretrained = _RELEASED.get((name, group))
            if pretrained is None:
                raise ValueError(
                    f"pretrained=True: no weights of {name!r} for backbone {group!r} are released yet. Pass "
                    f"pretrained='hf-hub:<org>/<name>' (a Hugging Face Hub checkpoint), pretrained='outputs/<run>' "
                    f"(a local run or checkpoint; train one with `python train_wrc.py model={name}`), or "
                    "pretrained=False for a randomly initialised upsampler"
                )
        source = pretrained if pretrained else name
        return _build(source, name, backbone, weights, extractor, device, allow_backbone_mismatch, kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"The {name!r} upsampler (``python train_wrc.py model={name}``) on ``backbone``: a DenseFeatureExtractor, or "
        "the bare upsampler with ``extractor=False``.\n\n"
        "``pretrained``: False for fresh weights (``kwargs`` go to the constructor, as the keys of "
        f"config/model/{name}.yaml), a local checkpoint or run directory, or ``'hf-hub:<org>/<name>[@revision]'``; "
        "True for released weights. ``backbone`` and ``weights``: see the module docstring."
    )
    return entry


def _learned_upsamplers() -> list:
    from wrc.upsamplers import get_upsampler_class, list_upsamplers

    return [name for name in list_upsamplers() if get_upsampler_class(name).trainable]


for _name in _learned_upsamplers():
    globals()[_name] = _entry(_name)
