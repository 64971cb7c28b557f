"""The Upsampler contract and the registry every method registers into.

An upsampler maps backbone features (B, C, h, w) plus the guidance image (B, 3, H, W) in [0, 1] to
dense features (B, C, H', W'). Methods with a native factor (``scale``, e.g. LiFT's 2x) reach other
sizes by a documented policy: the native step is applied while the result stays no larger than
the requested size, then one bilinear interpolation lands exactly on it. Methods without a native
factor (``scale = None``) produce any size directly.

Every module of this package (and of any folder added to its ``__path__``) is imported at the first
lookup, so a new method is one new file whose class carries ``@register_upsampler``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wrc.layers.guidance import IMAGE_TOLERANCE
from wrc.registry import Registry

UPSAMPLERS: Registry[type[Upsampler]] = Registry("upsampler", "model.name", package="wrc.upsamplers")


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
    native_steps: int | None = None  # fixed-factor methods: at most this many steps, then one interpolation (a
    # method used as its paper uses it, e.g. LiFT's single 2x step; None: as many as fit)
    any_backbone: ClassVar[bool] = False  # weights independent of the backbone's width and patch (NAF, AnyUp):
    # features of any channel count are read, and one checkpoint serves every backbone (patch_size is unused)

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
        size = self.default_output_size(features, image) if output_size is None else _check_size(output_size)
        if self.scale is None:
            return self.upsample_to(features, image, size, backbone)
        out, steps = features, 0
        while (out.shape[-2] * self.scale <= size[0] and out.shape[-1] * self.scale <= size[1]
               and (self.native_steps is None or steps < self.native_steps)):
            out, steps = self.upsample_step(out, image), steps + 1
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
        """Shapes and dtypes always; values (finite, image in [0, 1]) with one host sync, outside torch.compile."""
        if features.ndim != 4 or (features.shape[1] != self.in_channels and not self.any_backbone):
            raise ValueError(
                f"features must be (B, {self.in_channels}, h, w) for this {self.name!r} upsampler "
                f"(built for in_channels={self.in_channels}); got shape {tuple(features.shape)}"
            )
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[0] != features.shape[0]:
            raise ValueError(
                f"image must be (B={features.shape[0]}, 3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}"
            )
        if not features.is_floating_point():
            raise TypeError(f"features must be a floating-point tensor; got dtype {features.dtype}")
        if not image.is_floating_point():
            hint = " (8-bit pixels: pass image.float() / 255)" if image.dtype == torch.uint8 else ""
            raise TypeError(f"image must be float RGB in [0, 1]; got dtype {image.dtype}{hint}")
        if torch.compiler.is_compiling() or image.numel() == 0:
            return  # reading values back is a graph break; compiled callers were checked eagerly
        low, high = image.aminmax()  # NaN propagates and inf is out of range: no isfinite pass over the image
        in_range = (low >= -IMAGE_TOLERANCE) & (high <= 1 + IMAGE_TOLERANCE)
        if not bool(torch.isfinite(features).all() & in_range):
            _raise_bad_values(features, image)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, patch_size={self.patch_size}, scale={self.scale}"


def _check_size(output_size: Iterable[int]) -> tuple[int, int]:
    """Two positive ints (python, numpy, symbolic, or a torch.Size); floats are refused, never truncated."""
    try:
        size = tuple(output_size)
    except TypeError:  # not iterable (a single int, ...)
        size = ()
    if len(size) != 2 or not all(_is_int(s) for s in size) or min(size) < 1:
        raise ValueError(f"output_size must be two positive ints (H', W'); got {output_size!r}")
    return _as_size(size[0]), _as_size(size[1])


def _as_size(value: int | torch.SymInt) -> int | torch.SymInt:
    """A plain int, or a symbolic one kept symbolic (int() would pin a traced graph to the example's size)."""
    return value if isinstance(value, torch.SymInt) else int(value)


def _is_int(value: object) -> bool:
    return isinstance(value, (numbers.Integral, torch.SymInt)) and not isinstance(value, bool)


def _raise_bad_values(features: torch.Tensor, image: torch.Tensor) -> None:
    """Say which input is wrong and how (the slow path, after the one-sync check failed)."""
    for arg, t in (("features", features), ("image", image)):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            expected = "finite values" if arg == "features" else "finite float RGB in [0, 1]"
            raise ValueError(f"{arg} must hold {expected}; got {bad} NaN/inf of {t.numel()} values")
    low, high = (float(v) for v in image.aminmax())
    if low < -IMAGE_TOLERANCE:
        hint = "normalised with a mean and std? pass the [0, 1] image: the backbone and upsampler normalise it"
    elif high > 2:  # above any resampling overshoot of a [0, 1] image
        hint = "pixels in 0..255? divide by 255"
    else:
        hint = "bicubic resizing overshoots: clamp(0, 1)"
    raise ValueError(f"image must be float RGB in [0, 1]; got values in [{low:.4g}, {high:.4g}] ({hint})")


def register_upsampler(cls: type[Upsampler]) -> type[Upsampler]:
    """Class decorator: make ``cls`` constructible by its ``name`` (timm-style registry).

    A class defined outside ``wrc.upsamplers`` first sees every built-in method, so a taken name fails at its
    own definition rather than later, at the first lookup.
    """
    if not cls.__module__.startswith(f"{UPSAMPLERS.package}."):
        UPSAMPLERS.discover()
    return UPSAMPLERS.register(cls)


def list_upsamplers() -> list[str]:
    """Names accepted by ``create_upsampler`` (and by ``model=`` on the command line)."""
    return UPSAMPLERS.names()


def get_upsampler_class(name: str) -> type[Upsampler]:
    return UPSAMPLERS.get(name)


def create_upsampler(name: str, in_channels: int, patch_size: int, **kwargs: Any) -> Upsampler:
    """Build a registered upsampler for a backbone with ``in_channels`` and ``patch_size``."""
    cls = get_upsampler_class(name)
    try:
        upsampler = cls(in_channels, patch_size, **kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for upsampler {name!r} ({cls.__qualname__}): {err}") from None
    upsampler.init_kwargs = dict(kwargs)
    return upsampler

