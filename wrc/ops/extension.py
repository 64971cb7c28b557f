"""Which implementation serves an operator: the fused torch_wrc kernels, or the pure-PyTorch reference.

Every operator module asks ``extension_enabled(device)`` before dispatching to ``torch.ops.wrc.*``;
``reference_only()`` forces the reference everywhere inside a block (benchmarks and parity tests).
"""

from __future__ import annotations

import contextlib
import logging

import torch

try:
    import torch_wrc
except ImportError:  # the library works without its compiled extension
    torch_wrc = None

log = logging.getLogger("wrc")
_announced = False
_force_reference = False


@contextlib.contextmanager
def reference_only():
    """Run every operator of ``wrc.ops`` in pure PyTorch inside the block."""
    global _force_reference
    previous, _force_reference = _force_reference, True
    try:
        yield
    finally:
        _force_reference = previous


def extension_enabled(device: torch.device) -> bool:
    """Whether the fused torch_wrc kernels serve this device (the reference runs otherwise; said once)."""
    global _announced
    if _force_reference:
        return False
    available = torch_wrc is not None and torch_wrc.is_available()
    if available and (device.type == "cpu" or (device.type == "cuda" and torch_wrc.has_cuda_kernels())):
        return True
    if not _announced:
        reason = "not installed" if torch_wrc is None else torch_wrc.unavailable_reason() or f"no {device.type} kernels"
        log.info("torch_wrc extension not in use (%s): using the pure-PyTorch reference operators", reason)
        _announced = True
    return False
