"""One registry class for upsamplers, objectives and evaluation protocols (timm-style, by name).

A registry maps names to classes, refuses a second class under a taken name, and discovers its
implementations by importing every module of its package, so adding a method is one new file: no
import list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Name -> class. ``kind`` names the thing in messages (``upsampler``), ``config_key`` the option a user sets
    to choose one (``model.name``); ``package`` is imported module by module on first use."""

    def __init__(self, kind: str, config_key: str, package: str | None = None) -> None:
        self.kind, self.config_key, self.package = kind, config_key, package
        self._classes: dict[str, T] = {}
        self._discovered: set[str] = set()

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` available under its ``name`` class attribute."""
        name = getattr(cls, "name", "")
        if not name:
            article = "an" if self.kind[0] in "aeiou" else "a"
            raise ValueError(f"{cls.__qualname__} must set a class attribute `name` to register as {article} "
                             f"{self.kind}")
        existing = self._classes.get(name)
        if existing is not None and _identity(existing) != _identity(cls):
            raise ValueError(
                f"{self.kind} name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}; "
                f"{cls.__module__}.{cls.__qualname__} needs another name"
            )
        self._classes[name] = cls
        return cls

    def discover(self) -> None:
        """Import every module of the package (and any folder added to its ``__path__``) not imported yet."""
        if self.package is None:
            return
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__, prefix=f"{self.package}."):
            if info.name not in self._discovered and not info.name.rsplit(".", 1)[-1].startswith("_"):
                self._discovered.add(info.name)
                try:
                    importlib.import_module(info.name)
                except BaseException:
                    self._discovered.discard(info.name)  # the next lookup retries, and shows the real error again
                    raise

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._classes)

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} ({self.config_key}) {name!r}; available: {', '.join(self.names())}")
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy class clean up with this)."""
        self._classes.pop(name, None)


def submodule_getattr(package: str, path: list[str]):
    """A module ``__getattr__`` for a registry's package: ``package.<module>`` read as an attribute imports that
    module, as it did when the package imported every module eagerly."""

    def __getattr__(name: str) -> ModuleType:
        if not name.startswith("_") and name in {info.name for info in pkgutil.iter_modules(path)}:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def _identity(cls: type) -> tuple[str, str]:
    """A class re-created by re-importing its module is the same class for the registry."""
    return cls.__module__, cls.__qualname__
