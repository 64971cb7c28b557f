"""torch_wrc: opcheck, gradcheck and parity with the pure-PyTorch reference (CPU here, CUDA where a GPU exists).

Parity is against the reference run on the CPU in float64 (an oracle no device precision mode reaches: TF32
convolutions, cuFFT's algorithms); cases marked "> 256 cells" launch several thread blocks and make every
strided loop of the CUDA kernels take a second pass. Without the extension these tests skip, or fail where a
GPU is visible (tests/torch_wrc/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import torch_wrc
from tests.conftest import REPO_ROOT
from wrc import create_upsampler
from wrc.layers.reverse_conv import ReverseKernel
from wrc.ops.reverse_conv import block_solve_reference, weighted_reverse_conv


def assert_matches_cpu_float64(fused, reference, args, rtol: float, atol: float) -> None:
    """fused(*args) on the args' device and dtype against reference(*args) on the CPU in float64: the output and
    every input gradient under one random upstream gradient."""
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out = fused(*leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * upstream.to(out)).sum().backward()
    oracle_leaves = [a.detach().cpu().double().requires_grad_() for a in args]
    oracle = reference(*oracle_leaves)
    (oracle * upstream).sum().backward()
    torch.testing.assert_close(out.detach().cpu().double(), oracle.detach(), rtol=rtol, atol=atol)
    for index, (f, r) in enumerate(zip(leaves, oracle_leaves, strict=True)):
        torch.testing.assert_close(f.grad.cpu().double(), r.grad, rtol=rtol, atol=atol,
                                   msg=lambda m, i=index: f"gradient of input {i}: {m}")


SIZES = {"small": (5, 7), "over_256_cells": (17, 16)}  # LR (h, w); 17 x 16 = 272 cells per plane


def block_problem(device, dtype, scale=2, b=2, c=3, h=5, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h * scale, w * scale, generator=g),
               torch.rand(c, scale, scale, generator=g) + 0.1, torch.rand(b, c, h, w, generator=g) * 3,
               torch.rand(b, c, h * scale, w * scale, generator=g) + 0.2]
    return [t.to(device=device, dtype=dtype) for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(device, dtype):
    args = block_problem(device, dtype)
    torch.library.opcheck(torch.ops.wrc.block_solve.default, [a.requires_grad_() for a in args])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parity_with_the_reference_fp32(device, scale, size):
    h, w = SIZES[size]
    args = block_problem(device, torch.float32, scale=scale, h=h, w=w)
    assert_matches_cpu_float64(torch.ops.wrc.block_solve, block_solve_reference, args, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64(device):
    args = [a.requires_grad_() for a in block_problem(device, torch.float64, b=1, c=2, h=3, w=2)]
    assert torch.autograd.gradcheck(torch.ops.wrc.block_solve, args)


def test_public_solver_uses_the_extension():
    args = block_problem("cpu", torch.float64)
    y, z, kernel, w_low, w_high = args
    torch.testing.assert_close(weighted_reverse_conv(y, z, kernel, 2, w_low, w_high),
                               block_solve_reference(*args))


def test_unsupported_dtype_is_a_clear_error():
    args = block_problem("cpu", torch.float16)
    with pytest.raises(RuntimeError, match="supports float32 and float64 tensors; got y of dtype Half"):
        torch.ops.wrc.block_solve(*args)


def test_shape_mismatch_is_a_clear_error():
    y, z, kernel, w_low, w_high = block_problem("cpu", torch.float32)
    with pytest.raises(RuntimeError, match=r"z must be \(B, C, s h, s w\)"):
        torch.ops.wrc.block_solve(y, z[..., :-2], kernel, w_low, w_high)


def test_compiles_without_graph_breaks_in_the_solve():
    learned_kernel = ReverseKernel(16, 2)
    y, z, _, w_low, w_high = block_problem("cpu", torch.float32, c=16)

    def solve(y, z, w_low, w_high):
        return weighted_reverse_conv(y, z, learned_kernel(), 2, w_low, w_high)

    compiled = torch.compile(solve, fullgraph=True, backend="aot_eager")  # fullgraph: any graph break raises
    torch.testing.assert_close(compiled(y, z, w_low, w_high), solve(y, z, w_low, w_high))


def test_disabled_extension_falls_back_to_the_reference():
    script = (
        "import torch, torch_wrc\n"
        "from wrc.ops.reverse_conv import weighted_reverse_conv, block_solve_reference\n"
        "assert not torch_wrc.is_available(), 'WRC_DISABLE_EXTENSION=1 was ignored'\n"
        "g = torch.Generator().manual_seed(0)\n"
        "y, wl = torch.randn(1, 2, 3, 3, generator=g), torch.rand(1, 2, 3, 3, generator=g)\n"
        "z, wh = torch.randn(1, 2, 6, 6, generator=g), torch.rand(1, 2, 6, 6, generator=g) + 0.1\n"
        "k = torch.rand(2, 2, 2, generator=g)\n"
        "assert torch.equal(weighted_reverse_conv(y, z, k, 2, wl, wh), block_solve_reference(y, z, k, wl, wh))\n"
        "print('reference ok')\n"
    )
    env = {**os.environ, "WRC_DISABLE_EXTENSION": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "reference ok" in proc.stdout


@pytest.mark.parametrize("kernel_size", [2, 4])
def test_compiled_wrc_upsampler_has_no_graph_breaks_and_matches_eager(kernel_size):
    """The whole upsampler, forward and backward, under fullgraph: k = 2 (fused block solve) and k = 4 (PCG)."""
    torch.manual_seed(0)
    up = create_upsampler("wrc", 16, 16, kernel_size=kernel_size, iterations=5)
    feats, image = torch.randn(1, 16, 3, 4), torch.rand(1, 3, 48, 64)
    compiled_out = torch.compile(up, fullgraph=True, backend="aot_eager")(feats, image)
    compiled_out.square().mean().backward()
    compiled_grads = [p.grad.clone() for p in up.parameters()]
    up.zero_grad()
    eager_out = up(feats, image)
    eager_out.square().mean().backward()
    torch.testing.assert_close(compiled_out, eager_out)
    for got, want in zip(compiled_grads, (p.grad for p in up.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# wrc::lr_spectral_solve: the LR-spectrum step of the closed form
# ----------------------------------------------------------------------------------------------------------------


def hermitian_eigenvalues(free: torch.Tensor, width: int) -> torch.Tensor:
    """Eigenvalues (C, h, w // 2 + 1) from free half-spectrum values, even where the half spectrum holds both a
    frequency and its negative: in columns 0 and w / 2 (w even), row r pairs with row -r mod h. Moving one free
    entry moves both members of its pair, so the filtered spectrum stays Hermitian and irfft2 is well defined
    (on non-Hermitian input cuFFT's C2R and the CPU's give different results)."""
    mirror = (-torch.arange(free.shape[-2])) % free.shape[-2]
    eig = free.clone()
    for col in [0] + ([width // 2] if width % 2 == 0 else []):
        eig[..., col] = (free[..., col] + free[..., mirror, col]) / 2
    return eig


def spectral_problem(device, dtype, b=2, c=3, h=5, w=6, seed=0):
    from wrc.ops.reverse_conv import lr_eigenvalues

    g = torch.Generator().manual_seed(seed)
    kernel = torch.rand(c, 4, 4, generator=g, dtype=torch.float64) + 0.1
    eig = hermitian_eigenvalues(lr_eigenvalues(kernel / kernel.sum(dim=(-2, -1), keepdim=True), 2, h, w), w)
    lam = torch.rand(b, c, generator=g, dtype=torch.float64) * 3
    alpha = torch.rand(b, c, generator=g, dtype=torch.float64) + 0.1
    tensors = [torch.randn(b, c, h, w, generator=g, dtype=torch.float64), eig, lam, alpha]
    return [t.to(device=device, dtype=dtype) for t in tensors]


def spectral_reference(t, eig, lam, alpha):
    from wrc.ops.reverse_conv import lr_inverse_reference

    return lr_inverse_reference(t, eig, lam[..., None, None], alpha[..., None, None])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [6, 7])  # even and odd widths: the self-conjugate columns differ
def test_spectral_opcheck(device, dtype, width):
    args = [a.requires_grad_() for a in spectral_problem(device, dtype, w=width)]
    torch.library.opcheck(torch.ops.wrc.lr_spectral_solve.default, args)


@pytest.mark.parametrize("h, width", [(5, 6), (5, 7), (24, 22), (24, 23)])  # 24 x 12 = 288 > 256 frequencies
def test_spectral_parity_with_the_reference_fp32(device, h, width):
    args = spectral_problem(device, torch.float32, h=h, w=width)
    assert_matches_cpu_float64(torch.ops.wrc.lr_spectral_solve, spectral_reference, args, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("width", [4, 5])
def test_spectral_gradcheck_float64(device, width):
    """Through the Hermitian-preserving parametrisation of the eigenvalues (``hermitian_eigenvalues``)."""
    t, eig, lam, alpha = (a.requires_grad_() for a in spectral_problem(device, torch.float64, b=1, c=2, h=3, w=width))

    def solve(t, free, lam, alpha):
        return torch.ops.wrc.lr_spectral_solve(t, hermitian_eigenvalues(free, width), lam, alpha)

    assert torch.autograd.gradcheck(solve, (t, eig, lam, alpha))


def test_spectral_bad_input():
    t, eig, lam, alpha = spectral_problem("cpu", torch.float32)
    with pytest.raises(RuntimeError, match="supports float32 and float64 tensors; got t of dtype Half"):
        torch.ops.wrc.lr_spectral_solve(t.half(), eig.half(), lam.half(), alpha.half())
    with pytest.raises(RuntimeError, match=r"eig must be \(C, h, w // 2 \+ 1\)"):
        torch.ops.wrc.lr_spectral_solve(t, eig[..., :-1], lam, alpha)


def test_solvers_through_the_extension_equal_the_reference_path():
    """reverse_conv and the PCG solve through torch_wrc equal the pure-PyTorch path (pinned by the dense tests)."""
    from wrc.ops import reverse_conv as rc

    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64), torch.randn(2, 3, 10, 12, generator=g,
                                                                                  dtype=torch.float64)
    kernel = torch.rand(3, 4, 4, generator=g, dtype=torch.float64)
    lam, alpha = torch.rand(2, 3, generator=g, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.2
    fused = rc.reverse_conv(y, z, kernel, 2, lam, alpha, padding=1)
    with rc.reference_only():
        reference = rc.reverse_conv(y, z, kernel, 2, lam, alpha, padding=1)
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-12)
    y, z = y[:, :, :4], z[:, :, :8]  # and the weighted solve with a wide kernel (PCG)
    w_low, w_high = torch.rand_like(y), torch.rand_like(z) + 0.1
    fused = rc.weighted_reverse_conv(y, z, kernel, 2, w_low, w_high, tol=1e-12, iterations=200)
    with rc.reference_only():
        reference = rc.weighted_reverse_conv(y, z, kernel, 2, w_low, w_high, tol=1e-12, iterations=200)
    torch.testing.assert_close(fused, reference, rtol=1e-8, atol=1e-10)


def test_solvers_through_the_fused_decimation_match_the_reference(device, monkeypatch):
    """The closed form and the PCG solve (forward and backward) with A, A^T and their kernel gradient served by
    wrc::decimate*, as on CUDA, against the pure-PyTorch path on the CPU in float64. On the CPU the solvers route
    around the fused decimation (wrc.ops.reverse_conv._fused_decimation), so it is switched on here."""
    from wrc.ops import reverse_conv as rc

    routed: list[bool] = []

    def fused_decimation(t: torch.Tensor) -> bool:
        if not rc.extension_enabled(t.device):  # the reference's run (reference_only)
            return False
        routed.append(t.dtype in rc._EXTENSION_DTYPES)
        return routed[-1]

    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(2, 3, 17, 16, generator=g), torch.randn(2, 3, 34, 32, generator=g)  # > 256 LR cells
    kernel = torch.rand(3, 4, 4, generator=g) + 0.05
    lam, alpha = torch.rand(2, 3, generator=g), torch.rand(3, generator=g) + 0.2
    on_device = [t.double().to(device) for t in (y, z, kernel, lam, alpha)]
    with monkeypatch.context() as patch:
        patch.setattr(rc, "_fused_decimation", fused_decimation)
        fused = rc.reverse_conv(*on_device[:3], 2, *on_device[3:], padding=1)
    assert routed and all(routed), "the closed form did not go through wrc::decimate"
    with rc.reference_only():
        reference = rc.reverse_conv(y.double(), z.double(), kernel.double(), 2, lam.double(), alpha.double(),
                                    padding=1)
    torch.testing.assert_close(fused.cpu(), reference, rtol=1e-10, atol=1e-12)

    w_low, w_high = torch.rand(1, 2, 14, 16, generator=g), torch.rand(1, 2, 28, 32, generator=g) + 0.1
    args = (y[:1, :2, :14], z[:1, :2, :28], kernel[:2], w_low, w_high)  # padded by 2: 18 x 20 = 360 LR cells

    def pcg(y, z, kernel, w_low, w_high):
        return rc.weighted_reverse_conv(y, z, kernel, 2, w_low, w_high, tol=1e-13, iterations=300)

    routed.clear()
    with monkeypatch.context() as patch:
        patch.setattr(rc, "_fused_decimation", fused_decimation)
        assert_matches_cpu_float64(pcg, lambda *a: _reference_only(pcg, *a), [a.double().to(device) for a in args],
                                   rtol=1e-7, atol=1e-9)
    assert routed and all(routed), "the PCG solve did not go through wrc::decimate"


def _reference_only(fn, *args):
    from wrc.ops.reverse_conv import reference_only

    with reference_only():
        return fn(*args)


def test_a_visible_gpu_comes_with_the_cuda_kernels():
    """Where torch sees a GPU, an extension built without CUDA kernels would send every CUDA call to the
    reference, and a GPU run could pass without touching a kernel: fail instead."""
    if not torch.cuda.is_available():
        pytest.skip("no GPU visible")
    assert torch_wrc.has_cuda_kernels(), (
        "torch sees a GPU but torch_wrc was built without CUDA kernels: rebuild with FORCE_CUDA=1 "
        "(pip install -e . --no-deps --no-build-isolation)")


# ----------------------------------------------------------------------------------------------------------------
# wrc::decimate / wrc::decimate_adjoint: the forward model A and its adjoint
# ----------------------------------------------------------------------------------------------------------------

DECIMATE_GEOMETRIES = [(2, 2), (2, 3), (2, 4), (3, 5)]  # (scale, kernel size)


def decimate_problem(device, dtype, scale, k, b=2, c=3, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(b, c, h * scale, w * scale, generator=g), torch.randn(b, c, h, w, generator=g),
               torch.rand(c, k, k, generator=g)]
    return [t.to(device=device, dtype=dtype) for t in tensors]


@pytest.mark.parametrize("scale", [0, -2])
def test_decimate_refuses_a_scale_below_one_instead_of_crashing(device, scale):
    """The scale is checked before the op takes ``size % scale``: a 0 used to kill the process with SIGFPE, so the
    call runs in a child process, where a crash fails this test instead of ending the whole run."""
    code = ("import torch, torch_wrc\n"
            f"x, k = torch.rand(1, 1, 4, 4, device='{device}'), torch.rand(1, 2, 2, device='{device}')\n"
            "try:\n"
            f"    torch.ops.wrc.decimate(x, k, {scale})\n"
            "except RuntimeError as err:\n"
            "    print(str(err).splitlines()[0])\n")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert child.returncode == 0, f"the child died with {child.returncode}: {child.stderr[-2000:]}"
    assert f"wrc::decimate: scale must be >= 1; got {scale}" in child.stdout


@pytest.mark.parametrize("scale, k", DECIMATE_GEOMETRIES)
def test_decimate_opcheck(device, scale, k):
    x, y, kernel = decimate_problem(device, torch.float64, scale, k)
    torch.library.opcheck(torch.ops.wrc.decimate.default, (x.requires_grad_(), kernel.requires_grad_(), scale))
    torch.library.opcheck(torch.ops.wrc.decimate_adjoint.default, (y.requires_grad_(), kernel, scale))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale, k", DECIMATE_GEOMETRIES)
def test_decimate_parity_with_the_reference_fp32(device, scale, k, size):
    """A, A^T and their kernel gradient (through autograd) against the reference on the CPU in float64."""
    from wrc.ops.reverse_conv import apply_A_reference, apply_At_reference

    h, w = SIZES[size]
    x, y, kernel = decimate_problem(device, torch.float32, scale, k, h=h, w=w)
    assert_matches_cpu_float64(lambda a, kk: torch.ops.wrc.decimate(a, kk, scale),
                               lambda a, kk: apply_A_reference(a, kk, scale), (x, kernel), rtol=1e-5, atol=1e-5)
    assert_matches_cpu_float64(lambda a, kk: torch.ops.wrc.decimate_adjoint(a, kk, scale),
                               lambda a, kk: apply_At_reference(a, kk, scale), (y, kernel), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale, k", DECIMATE_GEOMETRIES)
def test_decimate_gradcheck_float64(device, scale, k):
    x, y, kernel = (t.requires_grad_() for t in decimate_problem(device, torch.float64, scale, k, b=1, c=2, h=3, w=3))
    assert torch.autograd.gradcheck(lambda a, kk: torch.ops.wrc.decimate(a, kk, scale), (x, kernel))
    assert torch.autograd.gradcheck(lambda a, kk: torch.ops.wrc.decimate_adjoint(a, kk, scale), (y, kernel))


def test_decimate_bad_input():
    x, y, kernel = decimate_problem("cpu", torch.float32, 2, 4)
    with pytest.raises(RuntimeError, match=r"kernel must be \(C, k, k\) with k >= scale = 3"):
        torch.ops.wrc.decimate_adjoint(y, kernel[:, :2, :2], 3)
    with pytest.raises(RuntimeError, match="supports float32 and float64 tensors"):
        torch.ops.wrc.decimate(x.half(), kernel.half(), 2)


def test_pcg_solve_compiles_without_graph_breaks_for_inference():
    """k > s: the PCG loop runs its full budget under torch.compile instead of reading a value to stop early."""
    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(1, 4, 6, 6, generator=g), torch.randn(1, 4, 12, 12, generator=g)
    kernel = torch.softmax(torch.randn(4, 16, generator=g), -1).view(4, 4, 4)
    w_low, w_high = torch.rand(1, 4, 6, 6, generator=g), torch.rand(1, 4, 12, 12, generator=g) + 0.1

    def solve(y, z, w_low, w_high):  # tol below reach: eager runs the full budget too, as compiled code does
        return weighted_reverse_conv(y, z, kernel, 2, w_low, w_high, iterations=30, tol=1e-30)

    compiled = torch.compile(solve, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(y, z, w_low, w_high), solve(y, z, w_low, w_high), rtol=1e-5, atol=1e-6)
