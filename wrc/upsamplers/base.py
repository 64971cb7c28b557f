"""The Upsampler contract and the registry every method registers into.

An upsampler maps backbone features (B, C, h, w) plus the guidance image (B, 3, H, W) in [0, 1] to
dense features (B, C, H', W'). Methods with a native factor (``scale``, e.g. LiFT's 2x) reach other
sizes by a documented policy: the native step is applied while the result stays no larger than
the requested size, then one bilinear interpolation lands exactly on it. Methods without a native
factor (``scale = None``) produce any size directly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

_REGISTRY: dict[str, type[Upsampler]] = {}


def resize(t: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize to ``size``; antialiased when any side shrinks, a no-op when the size already matches."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    shrinking = t.shape[-2] > size[0] or t.shape[-1] > size[1]
    return F.interpolate(t, size=size, mode=mode, align_corners=False, antialias=shrinking)


class Upsampler(nn.Module):
    """Base class: subclasses set the class attributes and implement ``upsample_step`` or ``upsample_to``.

    Args:
        in_channels: feature channels C of the backbone (injected by the builder, never configured).
        patch_size: patch size P of the backbone (injected likewise).
    """

    name: ClassVar[str] = ""
    scale: ClassVar[int | None] = None  # native factor per step; None = any output size
    needs_backbone: ClassVar[bool] = False  # backbone-in-the-loop methods (SRT, FeatUp-Implicit, ...)
    trainable: ClassVar[bool] = True

    def __init__(self, in_channels: int, patch_size: int) -> None:
        super().__init__()
        if in_channels < 1 or patch_size < 1:
            raise ValueError(f"in_channels and patch_size must be positive; got {in_channels}, {patch_size}")
        self.in_channels, self.patch_size = in_channels, patch_size
        self.init_kwargs: dict[str, Any] = {}  # filled by create_upsampler: the recipe saved in checkpoints

    def default_output_size(self, features: torch.Tensor, image: torch.Tensor) -> tuple[int, int]:
        """One native step for fixed-factor methods, the image's pixel grid otherwise."""
        if self.scale is not None:
            return features.shape[-2] * self.scale, features.shape[-1] * self.scale
        return image.shape[-2], image.shape[-1]

    def forward(
        self,
        features: torch.Tensor,
        image: torch.Tensor,
        output_size: tuple[int, int] | None = None,
        backbone: nn.Module | None = None,
    ) -> torch.Tensor:
        """Features (B, C, h, w) and image (B, 3, H, W) -> features (B, C, *output_size)."""
        self._check_inputs(features, image)
        if self.needs_backbone and backbone is None:
            raise ValueError(f"upsampler {self.name!r} runs the backbone itself: pass backbone=...")
        size = tuple(int(s) for s in (output_size or self.default_output_size(features, image)))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"output_size must be two positive ints (H', W'); got {output_size}")
        if self.scale is None:
            return self.upsample_to(features, image, size, backbone)
        out = features
        while out.shape[-2] * self.scale <= size[0] and out.shape[-1] * self.scale <= size[1]:
            out = self.upsample_step(out, image)
        return resize(out, size)

    def upsample_step(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """One native step: (B, C, h, w) -> (B, C, scale*h, scale*w). Fixed-factor methods override this."""
        raise NotImplementedError

    def upsample_to(
        self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int], backbone: nn.Module | None
    ) -> torch.Tensor:
        """Any-size methods override this."""
        raise NotImplementedError

    def _check_inputs(self, features: torch.Tensor, image: torch.Tensor) -> None:
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"features must be (B, {self.in_channels}, h, w) for this {self.name!r} upsampler "
                f"(built for in_channels={self.in_channels}); got shape {tuple(features.shape)}"
            )
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[0] != features.shape[0]:
            raise ValueError(
                f"image must be (B={features.shape[0]}, 3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}"
            )

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, patch_size={self.patch_size}, scale={self.scale}"


def register_upsampler(cls: type[Upsampler]) -> type[Upsampler]:
    """Class decorator: make ``cls`` constructible by its ``name`` (timm-style registry)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} must set a class attribute `name` to register")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"upsampler name {cls.name!r} is already registered by {_REGISTRY[cls.name].__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def list_upsamplers() -> list[str]:
    """Names accepted by ``create_upsampler`` (and by ``model=`` on the command line)."""
    return sorted(_REGISTRY)


def get_upsampler_class(name: str) -> type[Upsampler]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown upsampler (model.name) {name!r}; available: {', '.join(list_upsamplers())}")
    return _REGISTRY[name]


def create_upsampler(name: str, in_channels: int, patch_size: int, **kwargs: Any) -> Upsampler:
    """Build a registered upsampler for a backbone with ``in_channels`` and ``patch_size``."""
    cls = get_upsampler_class(name)
    try:
        upsampler = cls(in_channels, patch_size, **kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for upsampler {name!r} ({cls.__qualname__}): {err}") from None
    upsampler.init_kwargs = dict(kwargs)
    return upsampler
