"""wrc::pixel_mlp, pixel_mlp_into and pixel_mlp_moments (CPU inference) against the two linear maps computed in
float64 by PyTorch (the oracle), their refusals, and the routing of wrc.ops.pixel_mlp."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wrc.ops.pixel_mlp import pixel_mlp, pixel_mlp_moments

torch_wrc = pytest.importorskip("torch_wrc")
pytestmark = pytest.mark.skipif(not torch_wrc.is_available(), reason="torch_wrc not built")


def problem(n, p, c_in, k, m, dtype, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, c_in, generator=g, dtype=torch.float64)
    w1 = torch.randn(k, c_in, generator=g, dtype=torch.float64)
    b1 = torch.randn(k, generator=g, dtype=torch.float64)
    w2 = torch.randn(m, k, generator=g, dtype=torch.float64) / k ** 0.5
    b2 = torch.randn(m, generator=g, dtype=torch.float64) + offset
    return [t.to(dtype) for t in (x, w1, b1, w2, b2)]


def oracle(x, w1, b1, w2, b2):
    return F.linear(F.linear(x.double(), w1.double(), b1.double()).relu(), w2.double(),
                    None if b2 is None else b2.double())


# one pixel, pixel counts that are not a multiple of the six per step, widths that are not whole vectors, the
# encoder's shape (3 -> 32 -> 32) over blocks of 256 pixels
SHAPES = [(1, 1, 3, 32, 32), (2, 37, 3, 5, 7), (1, 1031, 3, 32, 32), (2, 13, 17, 40, 13), (1, 6, 1, 1, 1)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_outputs_match_the_two_linear_maps(dtype, shape, relu):
    x, w1, b1, w2, b2 = problem(*shape, dtype)
    expected = oracle(x, w1, b1, w2, b2)
    expected = expected.relu() if relu else expected
    out = torch.ops.wrc.pixel_mlp(x, w1, b1, w2, b2, relu)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())
    unbiased = torch.ops.wrc.pixel_mlp(x, w1, b1, w2, None, False)
    torch.testing.assert_close(unbiased.double(), oracle(x, w1, b1, w2, None), rtol=tol,
                               atol=tol * expected.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_moments_match_the_float64_mean_and_variance(dtype, shape):
    x, w1, b1, w2, b2 = problem(*shape, dtype)
    y = oracle(x, w1, b1, w2, b2)
    mean, var = torch.ops.wrc.pixel_mlp_moments(x, w1, b1, w2, b2)
    assert mean.dtype == var.dtype == torch.float64 and mean.shape == var.shape == y.shape[::2]
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    scale = y.abs().max().item()
    torch.testing.assert_close(mean, y.mean(1), rtol=tol, atol=tol * scale)
    torch.testing.assert_close(var, y.var(1, unbiased=False), rtol=tol, atol=tol * scale ** 2)


def test_moments_keep_their_digits_far_from_zero():
    """A mean 10^4 spreads from zero: E[y^2] - E[y]^2 in float64 from unshifted sums would keep ~8 digits of the
    variance; the shifted sums keep the float32 outputs' own precision."""
    x, w1, b1, w2, b2 = problem(1, 4000, 3, 32, 32, torch.float32, offset=1e4)
    y = torch.ops.wrc.pixel_mlp(x, w1, b1, w2, b2, False).double()  # the kernel's own float32 outputs
    _, var = torch.ops.wrc.pixel_mlp_moments(x, w1, b1, w2, b2)
    torch.testing.assert_close(var, y.var(1, unbiased=False), rtol=1e-9, atol=0)


def test_relu_keeps_nan_and_infinities_as_pytorch_does():
    x = torch.tensor([[[1.0], [float("inf")], [float("-inf")], [float("nan")]]])
    one = torch.ones(1, 1)
    for relu in (False, True):
        out = torch.ops.wrc.pixel_mlp(x, one, torch.zeros(1), one, None, relu)
        expected = F.linear(F.linear(x, one).relu(), one)
        expected = expected.relu() if relu else expected
        torch.testing.assert_close(out, expected, equal_nan=True)
    mean, _ = torch.ops.wrc.pixel_mlp_moments(x, one, torch.zeros(1), one, None)
    assert mean.isnan().all()  # a NaN pixel is not hidden in the statistics


def test_same_bits_for_any_thread_count():
    x, w1, b1, w2, b2 = problem(2, 3001, 3, 32, 32, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = torch.ops.wrc.pixel_mlp_moments(x, w1, b1, w2, b2), torch.ops.wrc.pixel_mlp(x, w1, b1, w2, b2, True)
    finally:
        torch.set_num_threads(threads)
    several = torch.ops.wrc.pixel_mlp_moments(x, w1, b1, w2, b2), torch.ops.wrc.pixel_mlp(x, w1, b1, w2, b2, True)
    assert all(torch.equal(a, b) for a, b in zip((*single[0], single[1]), (*several[0], several[1]), strict=True))


def test_into_writes_the_given_memory():
    x, w1, b1, w2, b2 = problem(2, 50, 3, 8, 5, torch.float32)
    out = torch.full((2, 50, 5), float("nan"))
    storage = out.data_ptr()
    torch.ops.wrc.pixel_mlp_into(out, x, w1, b1, w2, b2, True)
    assert out.data_ptr() == storage
    assert torch.equal(out, torch.ops.wrc.pixel_mlp(x, w1, b1, w2, b2, True))


def test_refuses_bad_arguments():
    x, w1, b1, w2, b2 = problem(1, 10, 3, 8, 5, torch.float32)
    op = torch.ops.wrc.pixel_mlp
    with pytest.raises(RuntimeError, match=r"x must be \(N, P, C_in\)"):
        op(x[0], w1, b1, w2, b2, False)
    with pytest.raises(RuntimeError, match=r"w1 must be \(K, C_in\) with C_in = 3"):
        op(x, w1[:, :2], b1, w2, b2, False)
    with pytest.raises(RuntimeError, match=r"b1 must be \(K,\) = \(8,\)"):
        op(x, w1, b1[:7], w2, b2, False)
    with pytest.raises(RuntimeError, match=r"w2 must be \(M, K\) with K = 8"):
        op(x, w1, b1, w2[:, :7], b2, False)
    with pytest.raises(RuntimeError, match=r"b2 must be \(M,\) = \(5,\)"):
        op(x, w1, b1, w2, b2[:4], False)
    with pytest.raises(RuntimeError, match="w2 must have x's dtype"):
        op(x, w1, b1, w2.double(), b2, False)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        op(x.half(), w1.half(), b1.half(), w2.half(), b2.half(), False)
    with pytest.raises(RuntimeError, match=r"out must be contiguous \(N, P, M\)"):
        torch.ops.wrc.pixel_mlp_into(torch.empty(1, 10, 6), x, w1, b1, w2, b2, False)
    with pytest.raises(RuntimeError, match=r"out must be contiguous"):
        torch.ops.wrc.pixel_mlp_into(torch.empty(1, 5, 10).transpose(1, 2), x, w1, b1, w2, b2, False)
    wide = torch.zeros(1, 10, 5)
    with pytest.raises(RuntimeError, match="out must not share memory with x"):
        torch.ops.wrc.pixel_mlp_into(wide, wide[:, :, :3], w1, b1, w2, b2, False)
    with pytest.raises(RuntimeError, match="no pixels"):
        torch.ops.wrc.pixel_mlp_moments(x[:, :0], w1, b1, w2, b2)


def test_wrapper_takes_the_differentiable_reference_for_gradients():
    x, w1, b1, w2, b2 = problem(1, 20, 3, 8, 5, torch.float64)
    w2.requires_grad_()
    out = pixel_mlp(x, w1, b1, w2, b2, relu=True)
    out.sum().backward()
    assert w2.grad is not None and w2.grad.abs().sum() > 0
    mean, var = pixel_mlp_moments(x, w1, b1, w2.detach(), b2)
    y = oracle(x, w1, b1, w2.detach(), b2)
    torch.testing.assert_close(mean, y.mean(1))
    torch.testing.assert_close(var, y.var(1, unbiased=False))


def test_passes_opcheck():
    x, w1, b1, w2, b2 = problem(1, 10, 3, 8, 5, torch.float64)
    for op, args in ((torch.ops.wrc.pixel_mlp.default, (x, w1, b1, w2, b2, True)),
                     (torch.ops.wrc.pixel_mlp_moments.default, (x, w1, b1, w2, b2)),
                     (torch.ops.wrc.pixel_mlp_into.default, (torch.empty(1, 10, 5, dtype=torch.float64), x, w1, b1,
                                                              w2, b2, False))):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


BUILD_SCRIPT = """
import sys, torch, torch_wrc
g = torch.Generator().manual_seed(0)
args = [torch.randn(*shape, generator=g) for shape in ((2, 1031, 3), (32, 3), (32,), (32, 32), (32,))]
torch.save([torch.ops.wrc.pixel_mlp(*args, True), *torch.ops.wrc.pixel_mlp_moments(*args), args], sys.argv[1])
"""


@pytest.mark.parametrize("build", ["baseline", "avx2", "best"])
def test_every_cpu_build_matches_the_oracle(tmp_path, build):
    """The baseline, AVX2 + FMA and (where the CPU has it) AVX-512 builds each round differently: each is held to
    the float64 oracle in a process of its own (WRC_BASELINE_ISA=1, WRC_NO_AVX512=1)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("WRC_BASELINE_ISA", "WRC_NO_AVX512")}
    env.update({"baseline": {"WRC_BASELINE_ISA": "1"}, "avx2": {"WRC_NO_AVX512": "1"}, "best": {}}[build])
    path = tmp_path / "out.pt"
    subprocess.run([sys.executable, "-c", BUILD_SCRIPT, str(path)], env=env, check=True, timeout=300)
    out, mean, var, args = torch.load(path)
    y = oracle(*args)
    scale = y.abs().max().item()
    torch.testing.assert_close(out.double(), y.relu(), rtol=2e-6, atol=2e-6 * scale)
    torch.testing.assert_close(mean, y.mean(1), rtol=2e-6, atol=2e-6 * scale)
    torch.testing.assert_close(var, y.var(1, unbiased=False), rtol=2e-6, atol=2e-6 * scale ** 2)
