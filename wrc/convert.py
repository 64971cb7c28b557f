"""Convert the released LiFT and FeatUp-JBU weights into this framework's upsamplers, in their paper presets.

    python -m wrc.convert --format lift --input lift_dino_s16.pth --out converted/lift \\
        --backbone vit_small_patch16_224.dino
    python -m wrc.convert --format featup_jbu --input dino16_jbu_stack_cocostuff.ckpt --out converted/jbu \\
        --backbone vit_small_patch16_224.dino

``--out`` becomes a checkpoints folder (``step_0000000/`` and ``LATEST``): ``wrc.load_upsampler(out)`` and
``python -m evaluation ... checkpoint=out`` read it like a trained one. The mappings follow the originals' module
names (saksham-s/lift, mhamilton723/FeatUp); channels, widths, radius and depth are read from the shapes.
Keys outside the upsampler (a hub checkpoint's backbone, FeatUp's training-time downsampler) are left out by
prefix; under the upsampler's prefix every key must map, or the error lists those that do not.
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wrc.checkpoint import save_checkpoint
from wrc.upsamplers.base import Upsampler, create_upsampler

log = logging.getLogger("wrc")

FORMATS = ("lift", "featup_jbu")
# original module -> this project's module (LiFT: conv, BN pairs of the image branch, the up block, the head)
LIFT_MODULES = {
    "image_convs_1.0": "image_stem.0.0", "image_convs_1.1": "image_stem.0.1",
    "image_convs_1.3": "image_stem.1.0", "image_convs_1.4": "image_stem.1.1",
    "image_convs_2.0": "image_down.0", "image_convs_2.1": "image_down.1",
    "up1.up": "up",
    "up1.conv_1.double_conv.0": "fuse.0.0", "up1.conv_1.double_conv.1": "fuse.0.1",
    "up1.conv_1.double_conv.3": "fuse.1.0", "up1.conv_1.double_conv.4": "fuse.1.1",
    "outc": "head",
}
# convolutions followed by a BatchNorm: an original bias is folded into it (this project's convs have none)
BN_AFTER = {"image_stem.0.0": "image_stem.0.1", "image_stem.1.0": "image_stem.1.1", "image_down.0": "image_down.1",
            "fuse.0.0": "fuse.0.1", "fuse.1.0": "fuse.1.1"}
PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
JBU_LAYER = re.compile(r"up(\d+)\.(range_temp|sigma_spatial|(range_proj|fixup_proj)\.(0|3)\.(weight|bias))")
JBU_NAMES = {"range_temp": "range_temperature", "sigma_spatial": "sigma_spatial", "range_proj": "range_mlp",
             "fixup_proj": "fixup"}
ANCHORS = {"lift": "image_convs_1.0.weight", "featup_jbu": "up1.range_temp"}


def upsampler_keys(state: Mapping[str, Any], format: str, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The upsampler's tensors with ``prefix`` stripped (found from a key only that upsampler has when None)."""
    if prefix is None:
        anchor = ANCHORS[format]
        candidates = (key[: len(key) - len(anchor)] for key in state if key.endswith(anchor))
        prefixes = sorted({p for p in candidates if p == "" or p.endswith(".")})
        if not prefixes:
            raise ValueError(f"no {format} upsampler in this state dict: no key ends in {anchor!r}; its keys are "
                             f"{summarise(list(state))}")
        if len(prefixes) > 1:
            raise ValueError(f"several {format} upsamplers in this state dict (prefixes {prefixes}): pass prefix=")
        prefix = prefixes[0]
    picked = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    left = sorted(key for key in state if not key.startswith(prefix))
    if left:
        log.info("left out %d keys outside the upsampler's prefix %r: %s", len(left), prefix, summarise(left))
    return picked


def summarise(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}]"


def unwrap(checkpoint: Any) -> Mapping[str, torch.Tensor]:
    """The state dict inside what ``torch.load`` returned (Lightning and hub checkpoints nest it)."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to tensors); got {type(checkpoint).__name__}")
    return checkpoint


def load_into(upsampler: Upsampler, state: dict[str, torch.Tensor], unmatched: list[str], format: str) -> Upsampler:
    """Load ``state`` strictly (shapes of equal size adapted: a (1,) scalar into a () one); eval mode."""
    expected = upsampler.state_dict()
    missing = sorted(set(expected) - set(state))
    if unmatched or missing:
        raise ValueError(f"this state dict is not laid out as the original {format}: unmatched keys "
                         f"{summarise(sorted(unmatched))}; keys of the upsampler left without a value "
                         f"{summarise(missing)}")
    adapted = {}
    for key, value in state.items():
        target = expected[key]
        if value.shape != target.shape and value.numel() == target.numel() and value.ndim + target.ndim <= 1:
            value = value.reshape(target.shape)
        adapted[key] = value.to(target.dtype)
    upsampler.load_state_dict(adapted, strict=True)
    return upsampler.eval()


def convert_lift_state_dict(state: Mapping[str, Any], *, patch_size: int, guidance_norm: str = "imagenet",
                            prefix: str | None = None) -> Upsampler:
    """A saksham-s/lift state dict -> the registered ``lift`` upsampler with its weights, in eval mode.

    Args:
        patch_size: the backbone's patch (the original supports 8 and 16; nothing in the weights says which).
        guidance_norm: "imagenet" for DINO backbones, "half" (mean = std = 0.5) for the others, as the original.
        prefix: of the LiFT keys (found when None).

    The image branch's convolution biases are folded into the BatchNorm after each (running_mean - bias): exact
    in eval mode, and in train mode too apart from the running statistics' update (a BN removes any bias).
    """
    picked = upsampler_keys(unwrap(state), "lift", prefix)
    converted, unmatched = {}, []
    for key, value in picked.items():
        match = re.fullmatch(rf"(.+)\.{PARAM}", key)
        target = LIFT_MODULES.get(match.group(1)) if match else None
        if target is None:
            unmatched.append(key)
        else:
            converted[f"{target}.{match.group(2)}"] = value
    for conv, bn in BN_AFTER.items():
        bias = converted.pop(f"{conv}.bias", None)
        if bias is not None and f"{bn}.running_mean" in converted:
            converted[f"{bn}.running_mean"] = converted[f"{bn}.running_mean"] - bias
        elif bias is not None:
            unmatched.append(f"{conv}.bias (no BatchNorm running_mean to fold it into)")
    absent = [original for key, original in (("head.weight", "outc.weight"),
                                             ("image_stem.0.0.weight", "image_convs_1.0.weight"))
              if key not in converted]
    if absent:  # the widths come from these two
        raise ValueError(f"this state dict is not laid out as the original lift: unmatched keys "
                         f"{summarise(sorted(unmatched))}; keys of the original missing {absent}")
    in_channels = converted["head.weight"].shape[0]
    image_channels = converted["image_stem.0.0.weight"].shape[0]
    upsampler = create_upsampler("lift", in_channels, patch_size, image_channels=image_channels,
                                 guidance_norm=guidance_norm)
    return load_into(upsampler, converted, unmatched, "lift")


def convert_featup_jbu_state_dict(state: Mapping[str, Any], *, patch_size: int, in_channels: int | None = None,
                                  radius: int | None = None, prefix: str | None = None) -> Upsampler:
    """A FeatUp JBU stack state dict (``upN.*`` and ``fixup_proj.1``; a hub or training checkpoint's
    ``upsampler.`` keys) -> the registered ``featup_jbu`` upsampler in its paper preset, in eval mode.

    Args:
        patch_size: the backbone's patch.
        in_channels: the feature channels, read from ``fixup_proj.1`` (needed only without it).
        radius: the window radius, read from the kernel correction's width (needed only without it; FeatUp: 3).
        prefix: of the stack's keys (found when None).
    """
    picked = upsampler_keys(unwrap(state), "featup_jbu", prefix)
    converted, unmatched, layers = {}, [], set()
    for key, value in picked.items():
        layer = JBU_LAYER.fullmatch(key)
        if layer is not None and int(layer.group(1)) >= 1:
            index = int(layer.group(1)) - 1
            layers.add(index)
            name = (JBU_NAMES[layer.group(2)] if layer.group(3) is None
                    else f"{JBU_NAMES[layer.group(3)]}.{layer.group(4)}.{layer.group(5)}")
            converted[f"layers.{index}.{name}"] = value
        elif re.fullmatch(r"fixup_proj\.1\.(weight|bias)", key):
            converted[f"refine.1.{key.rsplit('.', 1)[1]}"] = value
        else:
            unmatched.append(key)
    num_layers = max(layers) + 1
    refine = "refine.1.weight" in converted
    fixup = "layers.0.fixup.3.weight" in converted
    if refine:
        found = converted["refine.1.weight"].shape[0]
        if in_channels is not None and in_channels != found:
            raise ValueError(f"in_channels={in_channels} but fixup_proj.1.weight has {found} output channels")
        in_channels = found
    if in_channels is None:
        raise ValueError("in_channels must be given: this stack has no fixup_proj.1 to read it from")
    if fixup:
        taps = converted["layers.0.fixup.3.weight"].shape[0]
        diameter = math.isqrt(taps)
        if diameter**2 != taps or diameter % 2 == 0:
            raise ValueError(f"up1.fixup_proj.3.weight has {taps} outputs, not the (2r + 1)^2 taps of a window")
        radius = diameter // 2
    key_dim = converted["layers.0.range_mlp.0.weight"].shape[0] if "layers.0.range_mlp.0.weight" in converted else 32
    upsampler = create_upsampler("featup_jbu", in_channels, patch_size, num_layers=num_layers,
                                 radius=3 if radius is None else radius, key_dim=key_dim, kernel_fixup=fixup,
                                 refine=refine, preset="paper")
    return load_into(upsampler, converted, unmatched, "featup_jbu")


def lift_guidance_norm(backbone_name: str) -> str:
    """The original LiFT's rule: ImageNet statistics for DINO backbones, mean = std = 0.5 for the others."""
    return "imagenet" if "dino" in backbone_name.lower() else "half"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wrc.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=FORMATS, help="the layout of --input")
    parser.add_argument("--input", required=True, help="the original checkpoint (.pth / .ckpt, torch.load-able)")
    parser.add_argument("--out", required=True, help="folder to write the converted checkpoint into")
    parser.add_argument("--backbone", default=None,
                        help="timm name of the backbone the weights were trained on (patch size, channels, and "
                             "LiFT's guidance normalisation come from it; recorded in the checkpoint)")
    parser.add_argument("--patch-size", type=int, default=None, help="the backbone's patch, without --backbone")
    parser.add_argument("--guidance-norm", choices=("imagenet", "half"), default=None,
                        help="LiFT only: default from --backbone (DINO: imagenet, others: half), else imagenet")
    parser.add_argument("--prefix", default=None, help="prefix of the upsampler's keys (found when omitted)")
    parser.add_argument("--unsafe-load", action="store_true",
                        help="unpickle --input in full (torch.load weights_only=False: runs code in the file); only "
                             "for a trusted checkpoint holding more than tensors, e.g. a Lightning training state")
    args = parser.parse_args(argv)
    if args.backbone is None and args.patch_size is None:
        parser.error("pass --backbone NAME or --patch-size P: the weights do not say the patch size")
    return args


def main(argv: list[str] | None = None) -> int:
    from wrc.provenance import code_version_string

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    backbone_spec: dict[str, Any] = {}
    patch_size, channels = args.patch_size, None
    if args.backbone is not None:
        from wrc.backbone import FrozenBackbone

        backbone = FrozenBackbone(args.backbone, "random")  # only its dimensions: no download
        patch_size, channels = backbone.patch_size, backbone.embed_dim
        backbone_spec = {"name": args.backbone, "weights": "pretrained"}
    try:
        state = unwrap(torch.load(args.input, map_location="cpu", weights_only=not args.unsafe_load))
    except pickle.UnpicklingError as err:  # torch's message is a page long: keep the line naming the object
        reason = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        raise SystemExit(f"--input {args.input} holds more than tensors ({reason.split('. Please')[0]}); if you "
                         "trust it, pass --unsafe-load") from None
    if args.format == "lift":
        norm = args.guidance_norm or (lift_guidance_norm(args.backbone) if args.backbone else "imagenet")
        upsampler = convert_lift_state_dict(state, patch_size=patch_size, guidance_norm=norm, prefix=args.prefix)
    else:
        upsampler = convert_featup_jbu_state_dict(state, patch_size=patch_size, in_channels=channels,
                                                  prefix=args.prefix)
    if channels is not None and upsampler.in_channels != channels:
        raise SystemExit(f"--backbone {args.backbone} has {channels} channels but the weights are for "
                         f"{upsampler.in_channels}")
    meta = {"backbone": backbone_spec, "step": None, "code_version": code_version_string(),
            "converted_from": {"format": args.format, "input": Path(args.input).name}}
    path = save_checkpoint(Path(args.out) / "step_0000000", upsampler, meta)
    print(f"wrote {path} ({upsampler.name}, {upsampler.init_kwargs}); load it with wrc.load_upsampler({args.out!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
