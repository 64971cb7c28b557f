"""Reverse convolution: upsampling as a (weighted) Tikhonov least-squares problem, solved exactly.

Per batch element and channel, with x and the prior z on the HR grid (H, W) = (s h, s w) and y on the
LR grid (h, w), the solution minimises

    E(x) = sum_i wL[i] (y[i] - (A x)[i])^2 + sum_n wH[n] (x[n] - z[n])^2,

whose normal equations are (A^T WL A + WH) x = A^T WL y + WH z. The contract, with the tests that pin
it down, is shared/design/WRC_MATH.md; this module is the pure-PyTorch reference (and CPU fallback).

Geometry. HR cell (m, n) lies inside token (m // s, n // s); the s x s cells of token i are its block.
A correlates with a k x k kernel whose window is centred on the centre of block i:

    (A x)[i] = sum_t kernel[t] x[s i - offset + t],   offset = (k - s) // 2,   t in [0, k)^2,

so k = s covers exactly the block, and for k > s the window extends (k - s) / 2 cells on each side;
when k - s is odd the extra cell is on the high (bottom/right) side. Indices wrap around the torus
(the FFT's boundary condition); ``padding`` LR cells of reflect/replicate padding keep the wrap-around
away from the output. With kernel = 1 / s^2 (box, k = s), A is block averaging.

Three solvers:
(a) ``reverse_conv``: scalar weights per channel, the FFT closed form (Converse2D / USRNet data step),
    evaluated with LR-sized FFTs (see the note above ``lr_eigenvalues``).
(b) ``weighted_reverse_conv`` with k = s: the weighted problem decouples into independent blocks,
    solved in closed form (Sherman-Morrison), exact, O(N).
(c) ``weighted_reverse_conv`` with k > s: conjugate gradients, preconditioned by the closed form (a)
    on the system diagonally scaled by wH (exact for constant weights); gradients are those of the
    exact minimiser (implicit differentiation: one more solve with the same symmetric operator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wrc.ops.extension import extension_enabled, reference_only  # noqa: F401  (reference_only: re-exported)
from wrc.ops.padding import pad2d

PADDING_MODES = ("reflect", "replicate", "circular")
_EXTENSION_DTYPES = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# The forward model A and its adjoint, in space (the definition; everything else must agree with these)
# ----------------------------------------------------------------------------------------------------------------


def kernel_offset(kernel_size: int, scale: int) -> int:
    """Cells the kernel window extends before block i (the low side): (k - s) // 2."""
    return (kernel_size - scale) // 2


def check_geometry(kernel: torch.Tensor, scale: int) -> int:
    """Validate a depthwise kernel (C, k, k) against the scale; returns k."""
    if kernel.ndim != 3 or kernel.shape[-1] != kernel.shape[-2]:
        raise ValueError(f"kernel must be (C, k, k) (one square kernel per channel); got {tuple(kernel.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be a positive integer; got {scale}")
    k = kernel.shape[-1]
    if k < scale:
        raise ValueError(
            f"kernel_size={k} is smaller than scale={scale}: the kernel must cover at least one s x s block "
            "(every HR cell has to be observed by some LR cell)"
        )
    return k


def _fused_decimation(t: torch.Tensor) -> bool:
    """The fused A / A^T kernels serve CUDA only: on the CPU, PyTorch's vectorised (transposed) convolutions
    measured 3-5x faster than the scalar gather kernel (64 channels, 64x64 HR, k = 4), so the reference runs."""
    return t.device.type == "cuda" and t.dtype in _EXTENSION_DTYPES and extension_enabled(t.device)


def apply_A(x: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """(A x): HR (B, C, H, W) -> LR (B, C, H/s, W/s), circular boundaries (fused on CUDA when available)."""
    check_geometry(kernel, scale)
    if _fused_decimation(x):
        return torch.ops.wrc.decimate(x, kernel.to(x.dtype), scale)
    return apply_A_reference(x, kernel, scale)


def apply_At(y: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """(A^T y): LR (B, C, h, w) -> HR (B, C, s h, s w), the exact adjoint of ``apply_A`` (fused on CUDA)."""
    check_geometry(kernel, scale)
    if _fused_decimation(y):
        return torch.ops.wrc.decimate_adjoint(y, kernel.to(y.dtype), scale)
    return apply_At_reference(y, kernel, scale)


def apply_A_reference(x: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """``apply_A`` in plain PyTorch: circular padding, then a strided depthwise convolution."""
    k = check_geometry(kernel, scale)
    low = kernel_offset(k, scale)
    high = k - scale - low
    x = F.pad(x, (low, high, low, high), mode="circular") if k > scale else x
    return F.conv2d(x, kernel[:, None].to(x.dtype), stride=scale, groups=x.shape[1])


def apply_At_reference(y: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """``apply_At`` in plain PyTorch: a strided depthwise transposed convolution folded onto the torus."""
    k = check_geometry(kernel, scale)
    out = F.conv_transpose2d(y, kernel[:, None].to(y.dtype), stride=scale, groups=y.shape[1])  # H + k - s
    if k == scale:
        return out
    low = kernel_offset(k, scale)
    height, width = y.shape[-2] * scale, y.shape[-1] * scale
    return _fold_circular(_fold_circular(out, low, height, dim=-2), low, width, dim=-1)


def _fold_circular(t: torch.Tensor, low: int, size: int, dim: int) -> torch.Tensor:
    """Wrap a (low + size + high)-long axis back onto ``size`` cells of a torus."""
    total = t.shape[dim]
    core = t.narrow(dim, low, size).clone()
    if low:
        core.narrow(dim, size - low, low).add_(t.narrow(dim, 0, low))
    high = total - low - size
    if high:
        core.narrow(dim, 0, high).add_(t.narrow(dim, low + size, high))
    return core


# ----------------------------------------------------------------------------------------------------------------
# The closed form, with every FFT on the LR grid
# ----------------------------------------------------------------------------------------------------------------
#
# WRC_MATH.md writes the scalar-weight solution on the HR spectrum,
#     X = (1/alpha) [R - conj(K) . up( lam down(K . R) / (lam down(|K|^2) + alpha) )].
# The same identity (Woodbury) reads in space
#     (lam A^T A + alpha)^-1 r = (1/alpha) [r - lam A^T (lam A A^T + alpha)^-1 A r],
# and A A^T is a circulant on the *LR* torus whose eigenvalues are down(|K|^2). So the solve needs only
# the spatial A and A^T (small depthwise convolutions) and one rfft2/irfft2 pair of LR size: s^2 times
# fewer FFT points than the HR form, and no 1/alpha amplification when r = lam A^T y + alpha z:
#     x = z + lam A^T (lam A A^T + alpha)^-1 (y - A z).


def lr_eigenvalues(kernel: torch.Tensor, scale: int, h: int, w: int) -> torch.Tensor:
    """Eigenvalues of A A^T on the (h, w) LR torus, (C, h, w // 2 + 1) on the rfft2 half spectrum.

    A A^T is the circulant whose first column is A A^T applied to an LR impulse; its spectrum is real
    (the stencil is symmetric) and equals down(|K|^2) of the HR form.
    """
    impulse = kernel.new_zeros(1, kernel.shape[0], h, w)
    impulse[..., 0, 0] = 1.0
    stencil = apply_A(apply_At(impulse, kernel, scale), kernel, scale)[0]  # C, h, w
    return torch.fft.rfft2(stencil).real


def lr_inverse(t: torch.Tensor, eigenvalues: torch.Tensor, lam: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """lam (lam A A^T + alpha)^-1 t for LR maps t, diagonal in the LR Fourier basis (fused when available).

    lam and alpha are per (batch, channel), shaped (B|1, C|1, 1, 1).
    """
    if t.dtype in _EXTENSION_DTYPES and extension_enabled(t.device):
        b, c = t.shape[:2]
        per_plane = lambda v: v.to(t.dtype).expand(b, c, 1, 1).reshape(b, c).contiguous()  # noqa: E731
        return torch.ops.wrc.lr_spectral_solve(t.contiguous(), eigenvalues.to(t.dtype).contiguous(),
                                               per_plane(lam), per_plane(alpha))
    return lr_inverse_reference(t, eigenvalues, lam, alpha)


def lr_inverse_reference(t: torch.Tensor, eigenvalues: torch.Tensor, lam: torch.Tensor,
                         alpha: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch ``lr_inverse``."""
    spectrum = torch.fft.rfft2(t) * (lam / (lam * eigenvalues + alpha))
    return torch.fft.irfft2(spectrum, s=t.shape[-2:])


def closed_form_solve(rhs: torch.Tensor, kernel: torch.Tensor, scale: int, lam: torch.Tensor, alpha: torch.Tensor,
                      eigenvalues: torch.Tensor) -> torch.Tensor:
    """(lam A^T A + alpha I)^-1 rhs on the torus, for any HR right-hand side (the PCG preconditioner)."""
    correction = apply_At(lr_inverse(apply_A(rhs, kernel, scale), eigenvalues, lam, alpha), kernel, scale)
    return (rhs - correction) / alpha


def _per_channel(value: torch.Tensor | float, like: torch.Tensor, name: str) -> torch.Tensor:
    """Scalar, (C,) or (B, C) weights -> (B|1, C, 1, 1) in the dtype of ``like``."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        return value.view(1, 1, 1, 1)
    if value.ndim == 1:
        return value.view(1, -1, 1, 1)
    if value.ndim == 2:
        return value.view(*value.shape, 1, 1)
    if value.ndim == 4 and value.shape[-2:] == (1, 1):
        return value
    raise ValueError(f"{name} must be a scalar, (C,), (B, C) or (B, C, 1, 1); got shape {tuple(value.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Public solvers
# ----------------------------------------------------------------------------------------------------------------


def _check_pair(y: torch.Tensor, z: torch.Tensor, scale: int) -> None:
    if y.ndim != 4 or z.ndim != 4:
        raise ValueError(f"y and z must be (B, C, h, w) and (B, C, s h, s w); got {tuple(y.shape)}, {tuple(z.shape)}")
    expected = (y.shape[0], y.shape[1], y.shape[2] * scale, y.shape[3] * scale)
    if tuple(z.shape) != expected:
        raise ValueError(f"z must be (B, C, s h, s w) = {expected} for y of shape {tuple(y.shape)} and "
                         f"scale={scale}; got {tuple(z.shape)}")


def _pad(t: torch.Tensor, cells: int, mode: str) -> torch.Tensor:
    if cells and mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={mode!r}; expected one of {PADDING_MODES}")
    return pad2d(t, cells, mode)


def _crop(x: torch.Tensor, cells: int) -> torch.Tensor:
    return x[..., cells : x.shape[-2] - cells, cells : x.shape[-1] - cells] if cells else x


def reverse_conv(y: torch.Tensor, z: torch.Tensor, kernel: torch.Tensor, scale: int, lam: torch.Tensor | float,
                 alpha: torch.Tensor | float, *, padding: int = 0, padding_mode: str = "replicate") -> torch.Tensor:
    """(a) Scalar-weight reverse convolution (Converse2D): argmin lam |y - A x|^2 + alpha |x - z|^2.

    Args:
        y: LR observation (B, C, h, w).
        z: HR prior (B, C, s h, s w) on the same geometry (e.g. bilinear with half-pixel centres).
        kernel: depthwise kernel (C, k, k), k >= scale.
        lam, alpha: data and regularisation weights, scalars, (C,) or (B, C); lam >= 0, alpha > 0.
        padding: LR cells of ``padding_mode`` padding added before the solve and cropped after.
    """
    check_geometry(kernel, scale)
    _check_pair(y, z, scale)
    dtype = torch.promote_types(y.dtype, torch.float32)  # the solve runs in fp32 or fp64, never half
    y, z, kernel = y.to(dtype), z.to(dtype), kernel.to(dtype)
    lam_c, alpha_c = _per_channel(lam, y, "lam"), _per_channel(alpha, y, "alpha")
    # value checks read the tensors back: skipped under torch.compile / torch.export (the layers bound them)
    if not torch.compiler.is_compiling() and bool((lam_c < 0).any() | (alpha_c <= 0).any()):
        raise ValueError("reverse_conv needs lam >= 0 and alpha > 0 (they bound the conditioning of the solve)")
    y, z = _pad(y, padding, padding_mode), _pad(z, padding * scale, padding_mode)
    eigenvalues = lr_eigenvalues(kernel, scale, y.shape[-2], y.shape[-1])
    residual = y - apply_A(z, kernel, scale)
    x = z + apply_At(lr_inverse(residual, eigenvalues, lam_c, alpha_c), kernel, scale)
    return _crop(x, padding * scale)


def _check_weights(w_low: torch.Tensor, w_high: torch.Tensor) -> None:
    if torch.compiler.is_compiling():  # value checks would break the graph; the layers bound weights by construction
        return
    # one pass per map: a comparison with NaN is False, so NaN fails these as well
    if not bool((w_low >= 0).all()):
        raise ValueError("w_low must be >= 0 everywhere (data-fidelity weights); predict it with a bounded, "
                         "non-negative parameterisation such as eps + softplus")
    if not bool((w_high > 0).all()):
        raise ValueError("w_high must be > 0 everywhere (regularisation weights keep the system invertible); "
                         "predict it with a strictly positive parameterisation such as eps + softplus")


def block_solve(y: torch.Tensor, z: torch.Tensor, kernel: torch.Tensor, w_low: torch.Tensor,
                w_high: torch.Tensor) -> torch.Tensor:
    """(b) k = s with w_low, w_high broadcastable to y, z: the fused torch_wrc kernel on CUDA and when traced
    (torch.compile / torch.export keep the op), ``block_solve_conv`` in eager CPU code (the fused kernel needs
    every map expanded to every channel and contiguous: copies that cost more than the solve), and
    ``block_solve_reference`` without the extension. Eager CPU inference on channels-last y and z (the guided
    networks) takes torch_wrc's ``block_solve_channels_last``: one pass, maps shared by all channels read once."""
    if _solves_channels_last(y, z, kernel, w_low, w_high):
        cl = torch.channels_last  # the kernel takes (B, 1 | C, ...) maps: broadcast batch and leading axes first
        return torch.ops.wrc.block_solve_channels_last(
            y, z, kernel.to(y.dtype), _spatial(w_low, y).to(y.dtype).contiguous(memory_format=cl),
            _spatial(w_high, z).to(y.dtype).contiguous(memory_format=cl))
    if y.dtype in _EXTENSION_DTYPES and extension_enabled(y.device):
        if y.device.type == "cpu" and not torch.compiler.is_compiling():
            return block_solve_conv(y, z, kernel, w_low, w_high)
        b, c = y.shape[:2]
        return torch.ops.wrc.block_solve(y.contiguous(), z.contiguous(), kernel.contiguous(),
                                         w_low.expand(b, c, *y.shape[-2:]).contiguous(),
                                         w_high.expand(b, c, *z.shape[-2:]).contiguous())
    return block_solve_reference(y, z, kernel, w_low.expand_as(y), w_high.expand_as(z))


def _solves_channels_last(y: torch.Tensor, z: torch.Tensor, kernel: torch.Tensor, w_low: torch.Tensor,
                          w_high: torch.Tensor) -> bool:
    """Whether the channels-last inference kernel applies: eager CPU code where nothing needs a gradient, y and z
    channels-last (NCHW inputs keep ``block_solve_conv``, which needs no transpose), and a library with the op.
    The kernel checks the weights in its own pass (ValueError, as ``_check_weights``)."""
    if (y.device.type != "cpu" or y.dtype not in _EXTENSION_DTYPES or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or not extension_enabled(y.device)
            or not hasattr(torch.ops.wrc, "block_solve_channels_last")):
        return False
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (y, z, kernel, w_low, w_high))
    cl = torch.channels_last
    return (not needs_grad and y.dim() == z.dim() == 4 and z.dtype == y.dtype and not z.is_contiguous()
            and y.is_contiguous(memory_format=cl) and z.is_contiguous(memory_format=cl))


def block_solve_conv(y: torch.Tensor, z: torch.Tensor, kernel: torch.Tensor, w_low: torch.Tensor,
                     w_high: torch.Tensor) -> torch.Tensor:
    """(b) written with the spatial operators: ``block_solve_reference``'s Sherman-Morrison step is

        x = z + WH^-1 A^T g,   g = wL (y - A z) / (1 + wL A_sq(1 / wH)),

    with A_sq the decimation by the squared kernel (kappa^T D^-1 kappa per block). Maps shared by all channels
    (C = 1) stay one channel: A_sq of a one-channel map is one ordinary (C, 1, s, s) convolution, and WH^-1
    broadcasts, so nothing is expanded to every channel. Any memory format (channels-last stays so)."""
    s, c = kernel.shape[-1], y.shape[1]
    inv_high = w_high.reciprocal()
    kernel_sq = kernel.square()[:, None].to(y.dtype)  # C, 1, s, s
    if inv_high.shape[1] == 1:
        trust = F.conv2d(inv_high, kernel_sq, stride=s)  # B, C, h, w
    else:
        trust = F.conv2d(inv_high, kernel_sq, stride=s, groups=c)
    gain = w_low * (y - apply_A_reference(z, kernel, s)) / (1 + w_low * trust)
    return torch.addcmul(z, inv_high, apply_At_reference(gain, kernel, s))


def block_solve_reference(y: torch.Tensor, z: torch.Tensor, kernel: torch.Tensor, w_low: torch.Tensor,
                          w_high: torch.Tensor) -> torch.Tensor:
    """(b) k = s: each token's s x s block is an independent rank-one problem (Sherman-Morrison).

        x_B = z_B + D^-1 kappa wL (y - kappa . z_B) / (1 + wL kappa^T D^-1 kappa),   D = diag(wH on B)

    (the contract's form divided through by 1/wL, so wL = 0 gives x_B = z_B without a division by zero).
    """
    b, c, h, w = y.shape
    s = kernel.shape[-1]
    kappa = kernel.view(1, c, 1, s, 1, s)
    z_b = z.reshape(b, c, h, s, w, s)  # token i's block at [:, :, i_row, :, i_col, :]
    d_b = w_high.expand(b, c, h * s, w * s).reshape(b, c, h, s, w, s)
    wl = w_low.expand(b, c, h, w)[:, :, :, None, :, None]
    residual = y[:, :, :, None, :, None] - (kappa * z_b).sum(dim=(3, 5), keepdim=True)
    gain = wl / (1 + wl * (kappa.square() / d_b).sum(dim=(3, 5), keepdim=True))
    return (z_b + kappa / d_b * gain * residual).reshape(b, c, h * s, w * s)


def normal_operator(x: torch.Tensor, kernel: torch.Tensor, scale: int, w_low: torch.Tensor,
                    w_high: torch.Tensor) -> torch.Tensor:
    """M x = A^T WL A x + WH x, the (symmetric positive definite) system matrix of the normal equations."""
    return apply_At(w_low * apply_A(x, kernel, scale), kernel, scale) + w_high * x


def energy(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, kernel: torch.Tensor, scale: int,
           w_low: torch.Tensor, w_high: torch.Tensor) -> torch.Tensor:
    """E(x) per (batch, channel), on the torus: the objective every solver minimises."""
    data = (w_low * (y - apply_A(x, kernel, scale)).square()).sum(dim=(-2, -1))
    return data + (w_high * (x - z).square()).sum(dim=(-2, -1))


class _Preconditioner:
    """Diagonal scaling by WH around the closed form (a): P^-1 = D^-1/2 (lam' A^T A + I)^-1 D^-1/2.

    D = diag(wH) and lam' = mean(wL) / mean(wH) per channel. Exact when the weights are constant, where
    it equals the closed form (a) at those weights; with varying weights the scaling absorbs wH's spatial
    variation, which the plain closed form at the mean weights cannot (measured in
    benchmarks/bench_wrc_ops.py: 1e-3 relative error after 10 iterations, where it was 5e-2).
    """

    def __init__(self, kernel: torch.Tensor, scale: int, w_low: torch.Tensor, w_high: torch.Tensor) -> None:
        self.kernel, self.scale = kernel, scale
        self.eigenvalues = lr_eigenvalues(kernel, scale, w_low.shape[-2], w_low.shape[-1])
        self.inv_sqrt_high = w_high.rsqrt()
        self.lam = w_low.mean(dim=(-2, -1), keepdim=True) / w_high.mean(dim=(-2, -1), keepdim=True)
        self.one = torch.ones_like(self.lam)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        scaled = closed_form_solve(self.inv_sqrt_high * r, self.kernel, self.scale, self.lam, self.one,
                                   self.eigenvalues)
        return self.inv_sqrt_high * scaled


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=(-2, -1), keepdim=True)


def pcg(rhs: torch.Tensor, kernel: torch.Tensor, scale: int, w_low: torch.Tensor, w_high: torch.Tensor,
        iterations: int, tol: float) -> tuple[torch.Tensor, int]:
    """Solve M x = rhs for every (batch, channel) at once; returns (x, iterations used).

    Starts from the preconditioner's answer (``iterations=0`` returns it) and stops when every system's
    relative residual |r| / |rhs| is below ``tol``.
    """
    precondition = _Preconditioner(kernel, scale, w_low, w_high)
    x = precondition(rhs)
    if iterations == 0:
        return x, 0
    rhs_norm = _dot(rhs, rhs).sqrt().clamp_min(torch.finfo(rhs.dtype).tiny)
    r = rhs - normal_operator(x, kernel, scale, w_low, w_high)
    u = precondition(r)
    p = u
    rho = _dot(r, u)
    for step in range(1, iterations + 1):
        # The early exit reads a value; under torch.compile the loop runs its full budget instead, so the
        # graph does not break (CG iterations past convergence leave x unchanged up to rounding).
        if not torch.compiler.is_compiling() and bool((_dot(r, r).sqrt() / rhs_norm <= tol).all()):
            return x, step - 1
        mp = normal_operator(p, kernel, scale, w_low, w_high)
        curvature = _dot(p, mp)
        step_size = torch.where(curvature > 0, rho / curvature.clamp_min(torch.finfo(rhs.dtype).tiny), 0.0)
        x = x + step_size * p
        r = r - step_size * mp
        u = precondition(r)
        rho_next = _dot(r, u)
        p = u + torch.where(rho != 0, rho_next / rho.where(rho != 0, 1.0), 0.0) * p
        rho = rho_next
    return x, iterations


def kernel_grad_of_A(low: torch.Tensor, high: torch.Tensor, kernel: torch.Tensor, scale: int) -> torch.Tensor:
    """d<low, A_kernel high>/d kernel, summed over the batch: (C, k, k). The kernel gradient of ``apply_A``."""
    k = check_geometry(kernel, scale)
    if _fused_decimation(high):
        return torch.ops.wrc._decimate_kernel_grad(low, high, kernel.to(high.dtype), scale)
    before = kernel_offset(k, scale)
    after = k - scale - before
    high = F.pad(high, (before, after, before, after), mode="circular") if k > scale else high
    return torch.nn.grad.conv2d_weight(high, (kernel.shape[0], 1, k, k), low, stride=scale, groups=high.shape[1])[:, 0]


# The PCG solve and its backward are opaque custom ops: torch.compile neither unrolls the loop nor breaks
# the graph on it (the early exit reads a value, which is fine inside an op), with or without gradients.


@torch.library.custom_op("wrc_py::pcg_solve", mutates_args=())
def pcg_solve(y: torch.Tensor, z: torch.Tensor, kernel: torch.Tensor, w_low: torch.Tensor, w_high: torch.Tensor,
              scale: int, iterations: int, tol: float) -> torch.Tensor:
    """x* = M^-1 (A^T WL y + WH z) by ``pcg`` on the torus (inputs already padded and expanded)."""
    rhs = apply_At(w_low * y, kernel, scale) + w_high * z
    return pcg(rhs, kernel, scale, w_low, w_high, iterations, tol)[0]


@pcg_solve.register_fake
def _pcg_solve_fake(y, z, kernel, w_low, w_high, scale, iterations, tol):
    return torch.empty_like(z)


_FiveTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.library.custom_op("wrc_py::pcg_solve_backward", mutates_args=())
def pcg_solve_backward(grad_x: torch.Tensor, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                       kernel: torch.Tensor, w_low: torch.Tensor, w_high: torch.Tensor, scale: int,
                       iterations: int, tol: float) -> _FiveTensors:
    """Exact gradients of x* (implicit differentiation): solve M g = dL/dx* (M is symmetric), then

        dL/dtheta = d/dtheta [<A g, WL (y - A x*)> + <g, WH (z - x*)>]   with g and x* held fixed,

    which is g^T (db/dtheta - dM/dtheta x*). Returns the gradients for (y, z, kernel, w_low, w_high).
    """
    g, _ = pcg(grad_x, kernel, scale, w_low, w_high, iterations, tol)
    a_g = apply_A(g, kernel, scale)
    residual = y - apply_A(x, kernel, scale)
    grad_kernel = kernel_grad_of_A(w_low * residual, g, kernel, scale) - kernel_grad_of_A(w_low * a_g, x, kernel, scale)
    return w_low * a_g, w_high * g, grad_kernel, a_g * residual, g * (z - x)


@pcg_solve_backward.register_fake
def _pcg_solve_backward_fake(grad_x, x, y, z, kernel, w_low, w_high, scale, iterations, tol):
    return (torch.empty_like(y), torch.empty_like(z), torch.empty_like(kernel), torch.empty_like(w_low),
            torch.empty_like(w_high))


def _pcg_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(output, *inputs[:5])
    ctx.scale, ctx.iterations, ctx.tol = inputs[5:]


def _pcg_backward(ctx, grad_x):
    x, y, z, kernel, w_low, w_high = ctx.saved_tensors
    grads = pcg_solve_backward(grad_x.contiguous(), x, y, z, kernel, w_low, w_high, ctx.scale, ctx.iterations,
                               ctx.tol)
    return (*grads, None, None, None)


pcg_solve.register_autograd(_pcg_backward, setup_context=_pcg_setup_context)


def _spatial(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Weights broadcastable to ``like`` (B, C, H, W) as (B, 1 | C, H, W): the channel axis is not expanded."""
    weights = weights.reshape((1,) * (4 - weights.ndim) + tuple(weights.shape))
    return weights.expand(like.shape[0], weights.shape[1], *like.shape[-2:])


def weighted_reverse_conv(y: torch.Tensor, z: torch.Tensor, kernel: torch.Tensor, scale: int, w_low: torch.Tensor,
                          w_high: torch.Tensor, *, padding: int = 2, padding_mode: str = "replicate",
                          iterations: int = 50, tol: float = 1e-6) -> torch.Tensor:
    """The spatially weighted reverse convolution: argmin_x E(x), solved exactly.

    Args:
        y: LR features (B, C, h, w).
        z: HR prior (B, C, s h, s w) on the same geometry.
        kernel: depthwise kernel (C, k, k) with k >= scale.
        w_low: data weights >= 0 on the LR grid, broadcastable to (B, C, h, w).
        w_high: regularisation weights > 0 on the HR grid, broadcastable to (B, C, s h, s w).
        padding, padding_mode: LR cells of padding against wrap-around (unused when k == scale, where
            blocks are independent and nothing wraps).
        iterations, tol: PCG budget for k > scale; ``iterations=0`` returns the preconditioner's
            one-step approximation (exact for constant weights).

    Returns:
        x (B, C, s h, s w) in fp32 (fp64 for fp64 inputs), whatever the autocast state.
    """
    k = check_geometry(kernel, scale)
    _check_pair(y, z, scale)
    if iterations < 0 or tol <= 0:
        raise ValueError(f"iterations must be >= 0 and tol > 0; got iterations={iterations}, tol={tol}")
    dtype = torch.promote_types(y.dtype, torch.float32)
    with torch.autocast(y.device.type, enabled=False):
        y, z, kernel = y.to(dtype), z.to(dtype), kernel.to(dtype)
        w_low, w_high = w_low.to(dtype), w_high.to(dtype)
        if k == scale:  # maps shared by all channels stay one channel
            w_low, w_high = _spatial(w_low, y), _spatial(w_high, z)
            if not _solves_channels_last(y, z, kernel, w_low, w_high):  # that kernel checks them as it reads them
                _check_weights(w_low, w_high)  # before any expansion: a shared map is read once, not C times
            return block_solve(y, z, kernel, w_low, w_high)
        _check_weights(w_low, w_high)
        w_low, w_high = w_low.expand_as(y), w_high.expand_as(z)
        cells = padding * scale
        y, w_low = _pad(y, padding, padding_mode), _pad(w_low, padding, padding_mode)
        z, w_high = _pad(z, cells, padding_mode), _pad(w_high, cells, padding_mode)
        return _crop(pcg_solve(y, z, kernel, w_low.contiguous(), w_high.contiguous(), scale, iterations, tol), cells)
