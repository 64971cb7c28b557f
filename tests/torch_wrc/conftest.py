"""Set-up shared by the torch_wrc tests: full-precision references, and skip-or-fail without the extension."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import torch_wrc


@pytest.fixture(autouse=True)
def full_precision() -> Iterator[None]:
    """The references the fused kernels are held to run in full float32: on Ampere and newer GPUs cuDNN's
    convolutions (the reference A and A^T) default to TF32, about 1e-3 relative error against a 1e-5 tolerance."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])


@pytest.fixture(autouse=True)
def extension_or_skip(request: pytest.FixtureRequest) -> None:
    """Without the compiled extension these tests skip on a CPU-only machine (the extension is optional there),
    but fail where a GPU is visible or a test runs on CUDA: a GPU run must not pass without touching a kernel."""
    if "device" in request.fixturenames:
        request.getfixturevalue("device")  # conftest's fixture: a CUDA device without its kernels fails there
    if torch_wrc.is_available():
        return
    reason = f"torch_wrc not built: {torch_wrc.unavailable_reason()}"
    if torch.cuda.is_available() and "WRC_DISABLE_EXTENSION=1" not in reason:
        pytest.fail(f"a GPU is visible but {reason} (build it: FORCE_CUDA=1 pip install -e .)")
    pytest.skip(reason)
