"""torch_wrc: fused C++/CUDA kernels for the WRC operators, registered as torch.library ops (namespace ``wrc``).

The ``wrc`` package works without it (its pure-PyTorch reference in ``wrc.ops`` is the fallback and the
test oracle); when built, the extension only makes it faster. It is compiled by the project's install
step (see setup.py), never at import time. ``WRC_DISABLE_EXTENSION=1`` forces the reference path.
"""

from __future__ import annotations

import os

import torch  # noqa: F401  (loads libc10/libtorch, which the compiled library links against)

_DISABLED = os.environ.get("WRC_DISABLE_EXTENSION", "0").lower() in ("1", "true", "yes")
_IMPORT_ERROR: str | None = None

if _DISABLED:
    HAS_OPS = False
    _IMPORT_ERROR = "disabled by WRC_DISABLE_EXTENSION=1"
else:
    try:
        from torch_wrc import _C  # noqa: F401  (loads the library; TORCH_LIBRARY registers the ops)

        HAS_OPS = True
    except ImportError as err:  # not built (WRC_BUILD_EXTENSION=0, no compiler) or built for another torch
        HAS_OPS = False
        _IMPORT_ERROR = str(err)

if HAS_OPS:
    from torch_wrc import ops  # noqa: F401  (register_fake / register_autograd)


def is_available() -> bool:
    """True when the compiled ops are loaded and not disabled."""
    return HAS_OPS


def unavailable_reason() -> str | None:
    """Why the extension is not in use (None when it is)."""
    return _IMPORT_ERROR


def has_cuda_kernels() -> bool:
    """True when the loaded library carries CUDA kernels (built with a CUDA toolkit)."""
    return HAS_OPS and torch._C._dispatch_has_kernel_for_dispatch_key("wrc::block_solve", "CUDA")
