"""WRC_MATH.md section 4: every solver against a dense solve built independently by index arithmetic."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from wrc.ops.reverse_conv import (
    apply_A,
    apply_A_reference,
    apply_At,
    apply_At_reference,
    energy,
    kernel_grad_of_A,
    pcg_solve,
    reverse_conv,
    weighted_reverse_conv,
)

DT = torch.float64


def dense_A(kernel: torch.Tensor, scale: int, h: int, w: int) -> torch.Tensor:
    """The forward model as an (h w) x (H W) matrix, from the geometry's definition alone:
    (A x)[i, j] = sum_t kernel[t] x[(s i - (k - s) // 2 + t) mod H, (s j - (k - s) // 2 + t') mod W]."""
    k = kernel.shape[-1]
    big_h, big_w = h * scale, w * scale
    offset = (k - scale) // 2
    matrix = torch.zeros(h * w, big_h * big_w, dtype=kernel.dtype)
    for i, j, ty, tx in itertools.product(range(h), range(w), range(k), range(k)):
        m, n = (scale * i - offset + ty) % big_h, (scale * j - offset + tx) % big_w
        matrix[i * w + j, m * big_w + n] += kernel[ty, tx]
    return matrix


def dense_solve(y, z, kernel, scale, w_low, w_high):
    """Minimiser of E from the normal equations, one (batch, channel) at a time."""
    b, c, h, w = y.shape
    out = torch.empty_like(z)
    for bi, ci in itertools.product(range(b), range(c)):
        a = dense_A(kernel[ci], scale, h, w)
        wl, wh = w_low[bi, ci].flatten(), w_high[bi, ci].flatten()
        system = a.T @ (wl[:, None] * a) + torch.diag(wh)
        rhs = a.T @ (wl * y[bi, ci].flatten()) + wh * z[bi, ci].flatten()
        out[bi, ci] = torch.linalg.solve(system, rhs).view(h * scale, w * scale)
    return out


def problem(scale=2, k=4, h=4, w=5, c=2, b=2, seed=0, constant=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(b, c, h, w, generator=g, dtype=DT)
    z = torch.randn(b, c, h * scale, w * scale, generator=g, dtype=DT)
    kernel = torch.rand(c, k, k, generator=g, dtype=DT) + 0.1
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    if constant:
        lam = torch.rand(b, c, generator=g, dtype=DT) * 3
        alpha = torch.rand(b, c, generator=g, dtype=DT) + 0.2
        return y, z, kernel, lam[..., None, None].expand(b, c, h, w), alpha[..., None, None].expand_as(z)
    w_low = torch.rand(b, c, h, w, generator=g, dtype=DT) * 3
    w_high = torch.rand(b, c, h * scale, w * scale, generator=g, dtype=DT) + 0.2
    return y, z, kernel, w_low, w_high


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


GEOMETRIES = [(2, 2), (2, 3), (2, 4), (2, 5), (3, 3), (3, 5), (3, 4)]  # (scale, kernel size): k - s even and odd


@pytest.mark.parametrize("scale, k", GEOMETRIES)
@pytest.mark.parametrize("implementation", ["dispatched", "reference"])  # dispatched: torch_wrc on CUDA
def test_forward_model_matches_the_dense_matrix(scale, k, implementation):
    forward, adjoint = (apply_A, apply_At) if implementation == "dispatched" else (apply_A_reference,
                                                                                   apply_At_reference)
    y, z, kernel, _, _ = problem(scale, k)
    a = dense_A(kernel[0], scale, 4, 5)
    torch.testing.assert_close(forward(z, kernel, scale)[0, 0].flatten(), a @ z[0, 0].flatten())
    torch.testing.assert_close(adjoint(y, kernel, scale)[0, 0].flatten(), a.T @ y[0, 0].flatten())


@pytest.mark.parametrize("scale, k", GEOMETRIES)
def test_a_scalar_weights_closed_form_is_the_minimiser(scale, k):
    y, z, kernel, w_low, w_high = problem(scale, k, constant=True)
    x = reverse_conv(y, z, kernel, scale, w_low[..., 0, 0], w_high[..., 0, 0])
    assert rel(x, dense_solve(y, z, kernel, scale, w_low, w_high)) <= 1e-8


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_b_block_solve_is_the_minimiser(scale):
    y, z, kernel, w_low, w_high = problem(scale, scale)
    x = weighted_reverse_conv(y, z, kernel, scale, w_low, w_high)
    assert rel(x, dense_solve(y, z, kernel, scale, w_low, w_high)) <= 1e-8


@pytest.mark.parametrize("scale, k", [g for g in GEOMETRIES if g[1] > g[0]])
def test_c_pcg_reaches_the_minimiser_within_its_tolerance(scale, k):
    y, z, kernel, w_low, w_high = problem(scale, k)
    x = weighted_reverse_conv(y, z, kernel, scale, w_low, w_high, padding=0, iterations=200, tol=1e-11)
    assert rel(x, dense_solve(y, z, kernel, scale, w_low, w_high)) <= 1e-8


def test_c_tolerance_bounds_the_error():
    y, z, kernel, w_low, w_high = problem(2, 4, h=6, w=6)
    exact = dense_solve(y, z, kernel, 2, w_low, w_high)
    errors = [rel(weighted_reverse_conv(y, z, kernel, 2, w_low, w_high, padding=0, tol=tol), exact)
              for tol in (1e-2, 1e-4, 1e-6)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


@pytest.mark.parametrize("scale, k", [(2, 2), (2, 4), (3, 5)])
def test_zero_data_weight_returns_the_prior(scale, k):
    y, z, kernel, w_low, w_high = problem(scale, k)
    x = weighted_reverse_conv(y, z, kernel, scale, torch.zeros_like(w_low), w_high, padding=0, tol=1e-12)
    torch.testing.assert_close(x, z, rtol=0, atol=1e-10)
    torch.testing.assert_close(reverse_conv(y, z, kernel, scale, 0.0, 1.3), z, rtol=0, atol=1e-12)


def test_constant_weights_collapse_to_the_closed_form_in_zero_iterations():
    y, z, kernel, w_low, w_high = problem(2, 4, constant=True)
    approx = weighted_reverse_conv(y, z, kernel, 2, w_low, w_high, padding=0, iterations=0)
    closed = reverse_conv(y, z, kernel, 2, w_low[..., 0, 0], w_high[..., 0, 0])
    assert rel(approx, closed) <= 1e-12


@pytest.mark.parametrize("scale, k", [(2, 2), (2, 4), (2, 3)])
def test_energy_is_minimal(scale, k):
    y, z, kernel, w_low, w_high = problem(scale, k)
    x = weighted_reverse_conv(y, z, kernel, scale, w_low, w_high, padding=0, tol=1e-12)
    e_x = energy(x, y, z, kernel, scale, w_low, w_high)
    assert (e_x <= energy(z, y, z, kernel, scale, w_low, w_high)).all()
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        perturbed = x + 1e-3 * torch.randn(x.shape, generator=g, dtype=DT)
        assert (e_x <= energy(perturbed, y, z, kernel, scale, w_low, w_high)).all()


# ----------------------------------------------------------------------------------------------------------------
# Geometry (WRC_MATH.md section 1)
# ----------------------------------------------------------------------------------------------------------------


def box(c: int, scale: int, dtype=torch.float32) -> torch.Tensor:
    return torch.full((c, scale, scale), 1.0 / scale**2, dtype=dtype)


def bilinear(y: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(y, scale_factor=scale, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("solver", ["closed_form", "block"])
def test_box_kernel_strong_data_term_reproduces_block_means(solver):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, 3, 6, 7, generator=g)
    z = bilinear(torch.randn(1, 3, 6, 7, generator=g), 2)
    if solver == "closed_form":
        x = reverse_conv(y, z, box(3, 2), 2, 1e7, 1.0)
    else:
        x = weighted_reverse_conv(y, z, box(3, 2), 2, torch.full_like(y, 1e7), torch.ones_like(z))
    means = F.avg_pool2d(x, 2)
    assert rel(means, y) <= 1e-5


@pytest.mark.parametrize("scale, k", [(2, 2), (2, 4), (2, 3), (3, 5), (3, 4)])
def test_impulse_lands_on_its_own_block(scale, k):
    """The signed mass of the solution is centred on block (i, j), measured with torus-aware offsets."""
    n = 16
    y = torch.zeros(1, 1, n, n, dtype=DT)
    y[0, 0, 5, 9] = 1.0
    z = torch.zeros(1, 1, n * scale, n * scale, dtype=DT)
    taps = torch.exp(-0.5 * (torch.arange(k, dtype=DT) - (k - 1) / 2) ** 2)  # smooth, symmetric in its window
    kernel = (taps[:, None] * taps[None, :])[None] / taps.sum() ** 2
    x = reverse_conv(y, z, kernel, scale, 1.0, 1e-2)[0, 0]
    size = n * scale
    shift = 0.5 if (k - scale) % 2 else 0.0  # odd k - s: the extra cell is on the high side
    for axis, block in ((0, 5), (1, 9)):
        centre = block * scale + (scale - 1) / 2 + shift
        cells = torch.arange(size, dtype=DT)
        offsets = torch.remainder(cells - centre + size / 2, size) - size / 2
        profile = x.sum(dim=1 - axis)
        assert abs((profile * offsets).sum() / profile.sum()) <= 0.5


@pytest.mark.parametrize("scale, k", [(2, 2), (2, 4)])
def test_constant_input_gives_constant_output(scale, k):
    y = torch.full((1, 2, 5, 6), 0.7, dtype=DT)
    kernel = torch.rand(2, k, k, dtype=DT)
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    x = weighted_reverse_conv(y, bilinear(y, scale), kernel, scale, torch.rand(1, 2, 5, 6, dtype=DT),
                              torch.rand(1, 2, 5 * scale, 6 * scale, dtype=DT) + 0.1, tol=1e-12)
    torch.testing.assert_close(x, torch.full_like(x, 0.7))


@pytest.mark.parametrize("scale, k", [(2, 2), (2, 4), (3, 5)])
def test_linear_ramp_gives_linear_ramp(scale, k):
    """A ramp with its bilinear prior already satisfies A z = y away from the padded borders, so the
    solution is the ramp there; border effects decay exponentially into the interior."""
    n = 24
    ramp = torch.arange(n, dtype=DT)[:, None] * 0.3 + torch.arange(n, dtype=DT) * -0.2
    y = ramp.expand(1, 1, n, n).contiguous()
    kernel = torch.full((1, k, k), 1.0 / k**2, dtype=DT)  # symmetric around the block centre (k - s even)
    z = bilinear(y, scale)
    x = reverse_conv(y, z, kernel, scale, 5.0, 1.0, padding=4, padding_mode="reflect")[0, 0]
    centre, half = n // 2 * scale, 2 * scale
    interior = x[centre - half : centre + half, centre - half : centre + half]
    torch.testing.assert_close(interior, z[0, 0, centre - half : centre + half, centre - half : centre + half],
                               rtol=0, atol=1e-6)
    assert (interior[2:] - 2 * interior[1:-1] + interior[:-2]).abs().max() < 1e-6


@pytest.mark.parametrize("scale, k", [(2, 2), (2, 4), (3, 4)])
def test_translation_equivariance(scale, k):
    y, z, kernel, w_low, w_high = problem(scale, k, h=6, w=6, b=1, c=1, constant=True)
    x = reverse_conv(y, z, kernel, scale, w_low[..., 0, 0], w_high[..., 0, 0])
    shifted = reverse_conv(torch.roll(y, 1, dims=-1), torch.roll(z, scale, dims=-1), kernel, scale,
                           w_low[..., 0, 0], w_high[..., 0, 0])
    torch.testing.assert_close(shifted, torch.roll(x, scale, dims=-1))


def test_padding_keeps_the_output_size_and_removes_wrap_around():
    y = torch.zeros(1, 1, 8, 8, dtype=DT)
    y[..., :, 0] = 1.0  # a bright left edge would leak to the right edge on a torus
    z = bilinear(y, 2)
    kernel = torch.full((1, 4, 4), 1 / 16, dtype=DT)
    ones = lambda t: torch.ones_like(t)  # noqa: E731
    torus = weighted_reverse_conv(y, z, kernel, 2, ones(y), 0.1 * ones(z), padding=0, tol=1e-10)
    padded = weighted_reverse_conv(y, z, kernel, 2, ones(y), 0.1 * ones(z), padding=3, tol=1e-10)
    assert padded.shape == torus.shape == (1, 1, 16, 16)
    assert padded[..., -1].abs().max() < torus[..., -1].abs().max()


# ----------------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------------


def test_gradcheck_closed_form():
    y, z, kernel, w_low, w_high = problem(2, 3, h=3, w=3, b=1, c=2, constant=True)
    lam, alpha = w_low[..., 0, 0].clone(), w_high[..., 0, 0].clone()
    inputs = [t.clone().requires_grad_() for t in (y, z, kernel, lam, alpha)]
    assert torch.autograd.gradcheck(lambda *a: reverse_conv(*a[:3], 2, *a[3:], padding=1), inputs)


def test_gradcheck_block_solve():
    y, z, kernel, w_low, w_high = problem(2, 2, h=3, w=3, b=1, c=2)
    inputs = [t.clone().requires_grad_() for t in (y, z, kernel, w_low, w_high)]
    assert torch.autograd.gradcheck(lambda *a: weighted_reverse_conv(*a[:3], 2, *a[3:]), inputs)


@pytest.mark.parametrize("scale, k", [(2, 4), (2, 3)])
def test_gradcheck_pcg_implicit_gradients(scale, k):
    y, z, kernel, w_low, w_high = problem(scale, k, h=3, w=3, b=1, c=2)
    inputs = [t.clone().requires_grad_() for t in (y, z, kernel, w_low, w_high)]
    fn = lambda *a: weighted_reverse_conv(*a[:3], scale, *a[3:], padding=1, iterations=300, tol=1e-13)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6)


def test_pcg_gradients_equal_autograd_through_a_dense_solve():
    y, z, kernel, w_low, w_high = problem(2, 4, h=3, w=4, b=1, c=1)
    weights = torch.randn(1, 1, 6, 8, dtype=DT)
    inputs_a = [t.clone().requires_grad_() for t in (y, z, kernel, w_low, w_high)]
    inputs_b = [t.clone().requires_grad_() for t in (y, z, kernel, w_low, w_high)]
    (weighted_reverse_conv(*inputs_a[:3], 2, *inputs_a[3:], padding=0, iterations=300, tol=1e-13) * weights).sum() \
        .backward()
    a_y, a_z, a_k, a_wl, a_wh = inputs_b
    matrix = torch.zeros(12, 48, dtype=DT)
    for i, j, ty, tx in itertools.product(range(3), range(4), range(4), range(4)):  # same geometry, differentiable
        m, n = (2 * i - 1 + ty) % 6, (2 * j - 1 + tx) % 8
        row = torch.zeros(12, 48, dtype=DT)
        row[i * 4 + j, m * 8 + n] = 1.0
        matrix = matrix + row * a_k[0, ty, tx]
    wl, wh = a_wl.flatten(), a_wh.flatten()
    system = matrix.T @ (wl[:, None] * matrix) + torch.diag(wh)
    x = torch.linalg.solve(system, matrix.T @ (wl * a_y.flatten()) + wh * a_z.flatten())
    (x.view(1, 1, 6, 8) * weights).sum().backward()
    for got, want in zip(inputs_a, inputs_b, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("scale, k", [(2, 2), (2, 4), (3, 4)])
def test_kernel_grad_of_A_matches_the_dense_matrix(scale, k):
    """d<l, A h>/d kernel[t] = sum_i l[i] h[window_i(t)]: differentiate the dense matrix with autograd."""
    y, z, kernel, _, _ = problem(scale, k, b=1, c=1)
    dense_kernel = kernel[0].clone().requires_grad_()
    (y.flatten() @ dense_A(dense_kernel, scale, *y.shape[-2:]) @ z.flatten()).backward()
    torch.testing.assert_close(kernel_grad_of_A(y, z, kernel, scale)[0], dense_kernel.grad)


def pcg_inputs(seed=0):
    y, z, kernel, w_low, w_high = problem(2, 4, h=3, w=4, b=1, c=2, seed=seed)
    return [y, z, kernel, w_low, w_high, 2, 200, 1e-12]


def test_opcheck_pcg_solve():
    args = pcg_inputs()
    torch.library.opcheck(pcg_solve, [a.requires_grad_() if torch.is_tensor(a) else a for a in args])


def test_pcg_solve_compiles_without_graph_breaks_with_gradients():
    """k > s, training: forward and backward are opaque ops, so fullgraph compiles and gradients agree."""
    def loss(y, z, kernel, w_low, w_high):
        return weighted_reverse_conv(y, z, kernel.softmax(-1).view(2, 4, 4), 2, w_low, w_high, padding=1,
                                     iterations=200, tol=1e-12).square().sum()

    y, z, kernel, w_low, w_high = problem(2, 4, h=3, w=4, b=1, c=2)
    eager = [t.clone().requires_grad_() for t in (y, z, kernel.view(2, 16), w_low, w_high)]
    compiled = [t.detach().clone().requires_grad_() for t in eager]
    loss(*eager).backward()
    torch.compile(loss, fullgraph=True, backend="aot_eager")(*compiled).backward()
    for want, got in zip(eager, compiled, strict=True):
        torch.testing.assert_close(got.grad, want.grad)


# ----------------------------------------------------------------------------------------------------------------
# Numerics and bad input
# ----------------------------------------------------------------------------------------------------------------


def test_runs_in_fp32_under_bf16_autocast():
    y, z, kernel, w_low, w_high = (t.float() for t in problem(2, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = weighted_reverse_conv(y.bfloat16(), z.bfloat16(), kernel, 2, w_low, w_high)
    assert x.dtype == torch.float32


def test_kernel_smaller_than_scale():
    y, z, _, w_low, w_high = problem(2, 2)
    with pytest.raises(ValueError, match="kernel_size=1 is smaller than scale=2"):
        weighted_reverse_conv(y, z, torch.ones(2, 1, 1, dtype=DT), 2, w_low, w_high)


@pytest.mark.parametrize("bad", ["out of range", "nan"])
@pytest.mark.parametrize("which", ["low", "high"])
def test_non_positive_weights_are_refused(which, bad):
    y, z, kernel, w_low, w_high = problem(2, 4)
    if bad == "nan":
        (w_low if which == "low" else w_high)[0, 0, 1, 1] = float("nan")
    elif which == "low":
        w_low = w_low - 10
    else:
        w_high = w_high * 0
    with pytest.raises(ValueError, match=f"w_{which} must be"):
        weighted_reverse_conv(y, z, kernel, 2, w_low, w_high)


def test_mismatched_shapes():
    y, z, kernel, w_low, w_high = problem(2, 4)
    with pytest.raises(ValueError, match=r"z must be \(B, C, s h, s w\) = \(2, 2, 8, 10\)"):
        weighted_reverse_conv(y, z[..., :-1], kernel, 2, w_low, w_high)
    with pytest.raises(ValueError, match=r"kernel must be \(C, k, k\)"):
        reverse_conv(y, z, kernel[:, :3], 2, 1.0, 1.0)
