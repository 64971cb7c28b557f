"""torch_wrc: opcheck, gradcheck and parity with the pure-PyTorch reference (CPU here, CUDA where a GPU exists)."""

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

pytestmark = pytest.mark.skipif(not torch_wrc.is_available(),
                                reason=f"torch_wrc not built: {torch_wrc.unavailable_reason()}")


def assert_gradients_match(fused, reference, args, rtol: float, atol: float) -> None:
    """The input gradients of fused(*args) and reference(*args) under one random upstream gradient."""
    leaves_f = [a.clone().requires_grad_() for a in args]
    leaves_r = [a.clone().requires_grad_() for a in args]
    out = fused(*leaves_f)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    (reference(*leaves_r) * grad).sum().backward()
    for f, r in zip(leaves_f, leaves_r, strict=True):
        torch.testing.assert_close(f.grad, r.grad, rtol=rtol, atol=atol)


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


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parity_with_the_reference_fp32(device, scale):
    args = block_problem(device, torch.float32, scale=scale)
    fused = torch.ops.wrc.block_solve(*args)
    reference = block_solve_reference(*args)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    assert_gradients_match(torch.ops.wrc.block_solve, block_solve_reference, args, rtol=1e-5, atol=1e-5)


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


def spectral_problem(device, dtype, b=2, c=3, h=5, w=6, seed=0):
    from wrc.ops.reverse_conv import lr_eigenvalues

    g = torch.Generator().manual_seed(seed)
    kernel = torch.rand(c, 4, 4, generator=g, dtype=torch.float64) + 0.1
    eig = lr_eigenvalues(kernel / kernel.sum(dim=(-2, -1), keepdim=True), 2, h, w)
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


@pytest.mark.parametrize("width", [6, 7])
def test_spectral_parity_with_the_reference_fp32(device, width):
    args = spectral_problem(device, torch.float32, w=width)
    torch.testing.assert_close(torch.ops.wrc.lr_spectral_solve(*args), spectral_reference(*args), rtol=1e-5, atol=1e-5)
    assert_gradients_match(torch.ops.wrc.lr_spectral_solve, spectral_reference, args, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("width", [4, 5])
def test_spectral_gradcheck_float64(device, width):
    args = [a.requires_grad_() for a in spectral_problem(device, torch.float64, b=1, c=2, h=3, w=width)]
    assert torch.autograd.gradcheck(torch.ops.wrc.lr_spectral_solve, args)


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


@pytest.mark.parametrize("scale, k", DECIMATE_GEOMETRIES)
def test_decimate_parity_with_the_reference_fp32(device, scale, k):
    from wrc.ops.reverse_conv import apply_A_reference, apply_At_reference

    x, y, kernel = decimate_problem(device, torch.float32, scale, k)
    torch.testing.assert_close(torch.ops.wrc.decimate(x, kernel, scale), apply_A_reference(x, kernel, scale),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.ops.wrc.decimate_adjoint(y, kernel, scale), apply_At_reference(y, kernel, scale),
                               rtol=1e-5, atol=1e-5)


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
