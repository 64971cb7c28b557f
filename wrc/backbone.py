"""A frozen timm ViT that turns images in [0, 1] into NCHW patch-feature maps.

Every dimension comes from timm (embed_dim, patch_size, prefix tokens, mean/std), never from
parsing the model name, so any timm ViT works: DINO, DINOv2 (with or without registers), CLIP,
supervised ViTs, or a random-init model for tests.

Image-size policy (``size_policy``): a ViT needs H and W to be multiples of its patch size.
- ``"resize"`` (default): resize to the nearest multiple (at least one patch). The token grid then
  tiles the whole image uniformly, so features upsampled to (H, W) stay aligned with its pixels.
- ``"pad"``: replicate-pad right/bottom to the next multiple; token (i, j) covers exactly pixels
  [iP, (i+1)P) x [jP, (j+1)P) of the original image, the last row/column partly padding.
- ``"crop"``: centre-crop down to a multiple (loses at most P - 1 pixels per side pair).

Families (tests/wrc/test_backbone_families.py runs a shrunk random model of each):
- timm's ``VisionTransformer`` (DINO, DINOv2 with or without registers, CLIP, SigLIP/SigLIP2, RADIO as
  ``vit_*_radio_*``): learned absolute position embeddings, interpolated to any grid (``dynamic_img_size``);
- ``Eva`` (DINOv3, EVA02): rotary position embeddings, any grid natively;
- ``NaFlexVit`` (``naflexvit_*``, e.g. RADIO with its exact position-embedding resampling, SigLIP2 NaFlex):
  any size and aspect natively (it refuses the ``dynamic_img_size`` flag, so it is created without it).
Prefix tokens (class token, registers, RADIO's extra summary tokens) are dropped by the model's own
``num_prefix_tokens``.

Attention facets (``facet="query" | "key" | "value"``) are captured by hooks in the attention module of timm's
three attention styles (``ATTENTION_STYLES``: classic ``Attention``, ``AttentionRope``, Eva's ``EvaAttention``);
the attention itself is never re-implemented:
- query / key: the outputs of the attention's ``q_norm`` / ``k_norm`` modules (``nn.Identity`` without qk-norm),
  i.e. after the projection and its bias and after qk-norm, **before the rotary embedding**. The rotation is not a
  property of the token but of where it sits: RoPE turns query i and key j by their positions so that their dot
  product depends on p_i - p_j, and DINOv3 measures positions in units of the image's own grid (coordinates in
  [-1, 1]), so a rotated key of the same patch changes with the image size, the crop and its place in the grid.
  Key-similarity methods (LiFT's and TokenCut's key facet) and the multi-scale / multi-crop objectives compare
  features across positions and sizes; the pre-rotary key is the content of the token as the attention compares
  it, the exact analogue of the keys of a classic ViT (which carry position only through the token stream).
  Whoever needs the rotated form applies ``model.rope`` to it (the tests do, and recover the attention's output).
- value: the value rows of the block's own projection (fused ``qkv`` or ``v_proj``, with its bias: ``v_bias`` for
  Eva's fused layout, whose forward bypasses the ``qkv`` module) applied to the attention's input, captured by a
  pre-hook; no module outputs the value alone in the fused layouts.
Any other block (parallel blocks, BEiT's relative-position attention, ...) supports only ``facet="token"``; asking
for another facet fails at construction with the list of supported facets.

Inputs are checked (cheaply: one min/max reduction): a (B, 3, H, W) floating-point RGB tensor in [0, 1] with no
NaN or infinity, so that uint8 or mean/std-normalised images fail loudly instead of giving plausible features.

Offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set, or the weights' host not answering a 1.5 s TCP
connect), pretrained weights come straight from the local huggingface_hub or torch hub cache, or fail at once
with the message saying which ``backbone.weights`` to pass, instead of after a minute of hub retries.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention, AttentionRope
from timm.models.eva import EvaAttention
from torch import nn

from wrc.layers.guidance import IMAGE_TOLERANCE

log = logging.getLogger("wrc")

SIZE_POLICIES = ("resize", "pad", "crop")
FACETS = ("token", "key", "query", "value")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTENTION_STYLES = (Attention, AttentionRope, EvaAttention)  # the attention modules whose facets are captured


class BackboneWeightsError(RuntimeError):
    """Raised when the requested weights cannot be loaded; the message says what to pass instead."""


RANDOM_INIT_SEED = 0
HEAD_KEYS = ("head.", "fc_norm.", "head_drop.")  # classifier parts a feature backbone drops
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
HUB_CHECK_TIMEOUT_S = 1.5
EXPLICIT_SOURCES = ("hf-hub:", "local-dir:")  # timm names that say where their weights are
SAFE_ALTERNATIVES = {"pytorch_model.bin": "model.safetensors",
                     "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
WEIGHTS_HELP = ("Without network access pass backbone.weights=/path/to/checkpoint.(safetensors|pth) for a local "
                "file, or backbone.weights=random for a random initialisation.")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def host_reachable(host: str, port: int = 443, timeout: float = HUB_CHECK_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds, DNS included (run in a daemon
    thread, since a hanging resolver ignores socket timeouts)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="wrc-hub-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _safe_alternative(filename: str) -> str | None:
    """The safetensors file timm tries before a pickled ``.bin`` one (timm.models._hub._get_safe_alternatives)."""
    if filename in SAFE_ALTERNATIVES:
        return SAFE_ALTERNATIVES[filename]
    return filename[: -len(".bin")] + ".safetensors" if filename.endswith(".bin") else None


def _pretrained_source(name: str) -> tuple[str | None, list[str], str | None]:
    """(hub repo id with optional @revision, candidate file names, url) timm would load ``name``'s weights from."""
    cfg = timm.models.get_pretrained_cfg(name) if not name.startswith(EXPLICIT_SOURCES) else None
    if cfg is None:
        return None, [], None
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    candidates = [f for f in (_safe_alternative(filename), filename) if f]
    return cfg.hf_hub_id or None, candidates, cfg.url or None


def offline_reason(name: str) -> str | None:
    """Why pretrained weights of ``name`` cannot be downloaded now (None: go online, as timm does)."""
    for variable in OFFLINE_VARIABLES:
        if _flag(variable):
            return f"{variable}={os.environ[variable]}"
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE was set when huggingface_hub was imported"
        endpoint = constants.ENDPOINT
    except ImportError:
        endpoint = "https://huggingface.co"
    if any(os.environ.get(variable) for variable in PROXY_VARIABLES):
        return None  # behind a proxy a direct connection says nothing: let the hub client decide
    hub_id, _, url = _pretrained_source(name)
    host = urlparse(endpoint if hub_id else (url or endpoint)).hostname
    if host and not host_reachable(host):
        return f"{host} did not answer within {HUB_CHECK_TIMEOUT_S:g} s"
    return None


def cached_pretrained_file(name: str) -> Path | None:
    """The local copy of ``name``'s pretrained weights in the huggingface_hub cache (or torch hub's), if any."""
    hub_id, candidates, url = _pretrained_source(name)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        repo, _, revision = hub_id.partition("@")
        for filename in candidates if try_to_load_from_cache is not None else []:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if path.is_file():
            return path
    return None


def _create_model(name: str, seed: int | None = None, **kwargs) -> nn.Module:
    """``timm.create_model`` without a classifier and with ``dynamic_img_size=True`` (position embeddings follow any
    grid), unless the architecture refuses that flag: NaFlexVit takes any size natively and has no such argument.

    ``seed`` reseeds the global RNG before each attempt, so a random initialisation does not depend on the retry.
    """
    kwargs = {"num_classes": 0, **kwargs}
    if "dynamic_img_size" not in kwargs:
        try:
            return _seeded_create(name, seed, dynamic_img_size=True, **kwargs)
        except TypeError as err:
            if "dynamic_img_size" not in str(err):
                raise
    return _seeded_create(name, seed, **kwargs)


def _seeded_create(name: str, seed: int | None, **kwargs) -> nn.Module:
    if seed is not None:
        torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


def _load_pretrained(name: str, model_args: dict) -> nn.Module:
    """timm's pretrained model; offline, from the local cache or a fast clear error (module docstring).

    ``hf-hub:`` and ``local-dir:`` names go to timm unchanged: their weights' location is theirs to resolve.
    """
    overlay = None
    reason = None if name.startswith(EXPLICIT_SOURCES) else offline_reason(name)
    if reason is not None:
        cached = cached_pretrained_file(name)
        if cached is None:
            raise BackboneWeightsError(
                f"could not load pretrained weights for backbone.name={name!r}: offline ({reason}) and not in the "
                f"local huggingface_hub or torch hub cache. {WEIGHTS_HELP}"
            )
        log.info("offline (%s): loading backbone %s from the local cache %s", reason, name, cached)
        overlay = {"file": str(cached)}
    try:
        return _create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **model_args)
    except Exception as err:  # network, hub or cache failures all end here
        raise BackboneWeightsError(
            f"could not load pretrained weights for backbone.name={name!r} ({type(err).__name__}: {err}). "
            f"{WEIGHTS_HELP}"
        ) from None


def _load_weights(name: str, weights: str, model_args: dict | None = None) -> nn.Module:
    """Create the timm model with pretrained, random or local-checkpoint weights.

    Random weights are drawn from a fixed seed without touching the global RNG, so every process (and
    every later evaluation) sees the same random backbone an upsampler was trained on. ``model_args`` go to
    ``timm.create_model`` (architecture overrides, e.g. a shrunk ``depth`` for tests).
    """
    model_args = dict(model_args or {})
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            return _create_model(name, seed=RANDOM_INIT_SEED, pretrained=False, **model_args)
    if weights == "pretrained":
        return _load_pretrained(name, model_args)
    path = Path(os.path.expanduser(weights))
    if not path.is_file():
        raise BackboneWeightsError(
            f"backbone.weights={weights!r} is neither 'pretrained', 'random' nor an existing checkpoint file"
        )
    model = _create_model(name, pretrained=False, **model_args)
    try:
        state = timm.models.load_state_dict(str(path))
        filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:  # converts official (non-timm) checkpoint layouts, resizes pos_embed
            state = filter_fn(state, model)
        result = model.load_state_dict(state, strict=False)
    except Exception as err:
        raise BackboneWeightsError(
            f"backbone.weights={weights!r} could not be read as a checkpoint of backbone.name={name!r} "
            f"({type(err).__name__}: {err})"
        ) from None
    missing = [k for k in result.missing_keys if not k.startswith(HEAD_KEYS)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(HEAD_KEYS)]
    if missing or unexpected:
        raise BackboneWeightsError(
            f"backbone.weights={weights!r} does not fit backbone.name={name!r}: is it a checkpoint of that "
            f"architecture? missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    log.info("backbone %s loaded from %s", name, path)
    return model


def check_image(image: torch.Tensor) -> None:
    """Raise a ValueError naming ``image`` unless it is (B, 3, H, W) floating RGB in [0, 1] and finite."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor (B, 3, H, W) RGB in [0, 1]; got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor in [0, 1]; got dtype {image.dtype} "
                         "(for uint8 pixels pass image.float() / 255)")
    if image.numel() == 0:
        return
    # one reduction and one device sync; NaN propagates into both values, an infinity into one
    low, high = torch.stack(tuple(torch.aminmax(image.detach()))).float().tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"image must be finite; it holds NaN or infinite values (min {low}, max {high})")
    if low < -IMAGE_TOLERANCE or high > 1 + IMAGE_TOLERANCE:
        raise ValueError(
            f"image must hold RGB values in [0, 1]; got values in [{low:.4g}, {high:.4g}] (pass unnormalised images: "
            "the backbone applies its own mean and std; 0-255 pixels must be divided by 255)"
        )


class FrozenBackbone(nn.Module):
    """Frozen timm ViT returning patch features of shape (B, C, h, w) for images in [0, 1].

    Args:
        name: any timm model name, optionally with a pretrained tag (``vit_small_patch14_dinov2.lvd142m``).
        weights: ``"pretrained"`` (timm hub / cache), ``"random"``, or a path to a local checkpoint.
        layer: block index whose output is returned (negative counts from the end), or a list of them,
            whose features are concatenated along channels (``embed_dim`` grows accordingly).
        facet: ``"token"`` (block output) or ``"key"``/``"query"``/``"value"`` of that block's attention
            (query and key before the rotary embedding, module docstring).
        final_norm: apply the model's final norm to token outputs (ignored for attention facets).
        size_policy: how inputs that are not multiples of the patch size are handled (module docstring).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast for the forward pass; outputs are fp32.
        model_args: extra keyword arguments for ``timm.create_model`` (e.g. ``{"depth": 2}`` for a shrunk test
            model, ``{"img_size": 448}``); recorded in ``spec()`` when given.
    """

    def __init__(
        self,
        name: str,
        weights: str = "pretrained",
        *,
        layer: int | list[int] = -1,
        facet: str = "token",
        final_norm: bool = True,
        size_policy: str = "resize",
        precision: str = "fp32",
        model_args: dict | None = None,
    ) -> None:
        super().__init__()
        if facet not in FACETS:
            raise ValueError(f"backbone.facet={facet!r}; expected one of {FACETS}")
        if size_policy not in SIZE_POLICIES:
            raise ValueError(f"backbone.size_policy={size_policy!r}; expected one of {SIZE_POLICIES}")
        if precision not in PRECISIONS:
            raise ValueError(f"backbone.precision={precision!r}; expected one of {tuple(PRECISIONS)}")
        if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
            raise ValueError(
                f"unknown backbone.name={name!r}: not a timm model (see timm.list_models('vit_*'))"
            )
        self.name, self.weights = name, weights
        self.model_args = dict(model_args or {})
        self.model = _load_weights(name, weights, self.model_args)
        embed = _patch_embedding(self.model)
        if not hasattr(self.model, "forward_intermediates") or embed is None or not hasattr(self.model, "blocks"):
            raise ValueError(f"backbone.name={name!r} is not a ViT with a patch embedding, blocks and "
                             "forward_intermediates")
        num_blocks = len(self.model.blocks)
        requested = [layer] if isinstance(layer, int) else list(layer)
        if not requested or any(not -num_blocks <= i < num_blocks for i in requested):
            raise ValueError(f"backbone.layer={layer} out of range for {name} with {num_blocks} blocks")
        self.layer = layer
        self.layers = [i % num_blocks for i in requested]
        self.facet, self.final_norm = facet, final_norm
        self.size_policy, self.precision = size_policy, precision

        self.embed_dim: int = sum(self._channels(index) for index in self.layers)
        patch = embed.patch_size
        self.patch_size: int = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
        self.num_prefix_tokens: int = self.model.num_prefix_tokens
        data_cfg = timm.data.resolve_model_data_config(self.model)
        self.register_buffer("mean", torch.tensor(data_cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Always stay in eval mode: dropout and stochastic depth must never touch the frozen features."""
        return super().train(False)

    def spec(self) -> dict:
        """The arguments that rebuild this backbone (saved beside checkpoints)."""
        spec = {
            "name": self.name, "weights": self.weights, "layer": self.layer, "facet": self.facet,
            "final_norm": self.final_norm, "size_policy": self.size_policy, "precision": self.precision,
        }
        return {**spec, "model_args": dict(self.model_args)} if self.model_args else spec

    def _attention(self, index: int) -> nn.Module:
        """The attention module of block ``index``, or a ValueError naming the facets this model supports."""
        attn = getattr(self.model.blocks[index], "attn", None)
        if not isinstance(attn, ATTENTION_STYLES):
            found = type(attn).__name__ if attn is not None else f"no .attn ({type(self.model.blocks[index]).__name__})"
            styles = ", ".join(style.__name__ for style in ATTENTION_STYLES)
            raise ValueError(
                f"backbone.facet={self.facet!r} is not available for backbone.name={self.name!r}: block {index} has "
                f"{found}, not one of timm's attention modules {styles}; supported facets for this model: ('token',)"
            )
        return attn

    def _channels(self, index: int) -> int:
        """Channels of the selected facet of block ``index`` (fewer for key/value under grouped-query attention)."""
        if self.facet == "token":
            return self.model.embed_dim
        attn = self._attention(index)
        heads = attn.num_heads if self.facet == "query" else getattr(attn, "num_kv_heads", attn.num_heads)
        return heads * attn.head_dim

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) this backbone produces for an image of (height, width) pixels."""
        p = self.patch_size
        if height < p or width < p:
            raise ValueError(f"image of {height}x{width} pixels is smaller than one {p}x{p} patch of {self.name}")
        if self.size_policy == "pad":
            return math.ceil(height / p), math.ceil(width / p)
        if self.size_policy == "crop":
            return height // p, width // p
        return max(1, round(height / p)), max(1, round(width / p))

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """Check ``image`` and apply the size policy so that both sides are multiples of the patch size."""
        check_image(image)
        return self._fit_to_patches(image)

    def _fit_to_patches(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        h, w = self.grid_size(height, width)
        p = self.patch_size
        if (h * p, w * p) == (height, width):
            return image
        if self.size_policy == "pad":
            return F.pad(image, (0, w * p - width, 0, h * p - height), mode="replicate")
        if self.size_policy == "crop":
            top, left = (height - h * p) // 2, (width - w * p) // 2
            return image[..., top : top + h * p, left : left + w * p]
        return F.interpolate(image, size=(h * p, w * p), mode="bilinear", align_corners=False, antialias=True)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        """Image (B, 3, H, W) in [0, 1] -> features (B, C, h, w), fp32.

        ``stride`` (pixels, dividing the patch size) runs the patch embedding with overlapping patches:
        the image is taken as is (no size policy), the grid is ((H - P) // stride + 1, ...) and the
        position embeddings are interpolated to it. None = the patch size (the model's own tokens).
        """
        check_image(image)
        if stride is None:
            image = self._fit_to_patches(image)
            stride = self.patch_size
        elif stride < 1 or self.patch_size % stride:
            raise ValueError(f"stride must divide the patch size {self.patch_size}; got {stride}")
        elif stride != self.patch_size and not isinstance(getattr(_patch_embedding(self.model), "proj", None),
                                                          nn.Conv2d):
            raise ValueError(f"stride={stride} needs a convolutional patch embedding, which {self.name} lacks; "
                             "use stride=None")
        elif min(image.shape[-2:]) < self.patch_size:
            raise ValueError(f"image of {tuple(image.shape[-2:])} pixels is smaller than one patch of {self.name}")
        grid = tuple((side - self.patch_size) // stride + 1 for side in image.shape[-2:])
        x = (image[..., : (grid[0] - 1) * stride + self.patch_size, : (grid[1] - 1) * stride + self.patch_size]
             - self.mean) / self.std
        dtype = PRECISIONS[self.precision]
        autocast = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast, self._patch_stride(stride):
            if self.facet == "token":
                tokens = self.model.forward_intermediates(
                    x, indices=self.layers, norm=self.final_norm, stop_early=True,
                    output_fmt="NLC", intermediates_only=True,
                )
            else:
                tokens = self._attention_facets(x)
        feats = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid) for t in tokens]
        return torch.cat(feats, dim=1).float() if len(feats) > 1 else feats[0].float()

    @contextmanager
    def _patch_stride(self, stride: int):
        """Temporarily run the patch embedding with ``stride`` (timm then interpolates the position embeddings
        to whatever grid comes out, since the model is built with dynamic_img_size)."""
        if stride == self.patch_size:
            yield
            return
        embed = self.model.patch_embed
        saved = embed.proj.stride, embed.patch_size
        embed.proj.stride, embed.patch_size = (stride, stride), (stride, stride)
        try:
            yield
        finally:
            embed.proj.stride, embed.patch_size = saved

    def _attention_facets(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Query, key or value tokens (B, N, C) of each selected block, prefix tokens dropped (module docstring)."""
        captured: dict[int, torch.Tensor] = {}
        handles = []
        for index in self.layers:
            attn = self._attention(index)
            if self.facet == "value":
                def hook(module, args, kwargs, index=index):
                    captured[index] = _value(module, args[0] if args else kwargs["x"])
                handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                def hook(_module, _args, heads, index=index):  # heads: B, num_heads, N, head_dim
                    captured[index] = heads.transpose(1, 2).flatten(2)
                norm = attn.q_norm if self.facet == "query" else attn.k_norm
                handles.append(norm.register_forward_hook(hook))
        try:
            self.model.forward_intermediates(
                x, indices=[max(self.layers)], stop_early=True, output_fmt="NLC", intermediates_only=True
            )
        finally:
            for handle in handles:
                handle.remove()
        return [captured[index][:, self.num_prefix_tokens :] for index in self.layers]


def _patch_embedding(model: nn.Module) -> nn.Module | None:
    """The module that turns pixels into tokens: ``patch_embed`` (VisionTransformer, Eva) or ``embeds`` (NaFlexVit)."""
    for attribute in ("patch_embed", "embeds"):
        embed = getattr(model, attribute, None)
        if embed is not None and hasattr(embed, "patch_size"):
            return embed
    return None


def _value(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Value tokens (B, N, C) of attention ``attn`` for its input ``x``: the value rows of its own projection."""
    if getattr(attn, "v_proj", None) is not None:
        return attn.v_proj(x)
    rows = attn.qkv.weight.shape[0] // 3
    bias = attn.qkv.bias[2 * rows :] if attn.qkv.bias is not None else getattr(attn, "v_bias", None)
    return F.linear(x, attn.qkv.weight[2 * rows :], bias)
