"""Python-side registrations of the torch_wrc ops: fake (meta) kernels for torch.compile, and autograd."""

from __future__ import annotations

import torch


@torch.library.register_fake("wrc::block_solve")
def _block_solve_fake(y, z, kernel, w_low, w_high):
    s = kernel.shape[-1]
    torch._check(z.shape == (y.shape[0], y.shape[1], y.shape[2] * s, y.shape[3] * s))
    torch._check(w_low.shape == y.shape and w_high.shape == z.shape)
    return torch.empty_like(z)


@torch.library.register_fake("wrc::_block_solve_backward")
def _block_solve_backward_fake(grad, y, z, kernel, w_low, w_high):
    return (torch.empty_like(y), torch.empty_like(z), torch.empty_like(kernel), torch.empty_like(w_low),
            torch.empty_like(w_high))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _block_solve_backward(ctx, grad):
    return torch.ops.wrc._block_solve_backward(grad, *ctx.saved_tensors)


torch.library.register_autograd("wrc::block_solve", _block_solve_backward, setup_context=_setup_context)


def _inference_only(name: str, differentiable: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"wrc::{name} is an inference kernel without a backward; for gradients call "
                           f"{differentiable}")
    return backward


if hasattr(torch.ops.wrc, "block_solve_channels_last"):  # absent from a library built before the op existed
    @torch.library.register_fake("wrc::block_solve_channels_last")
    def _block_solve_channels_last_fake(y, z, kernel, w_low, w_high):
        s = kernel.shape[-1]
        torch._check(z.shape == (y.shape[0], y.shape[1], y.shape[2] * s, y.shape[3] * s))
        return torch.empty_like(z, memory_format=torch.channels_last)

    torch.library.register_autograd("wrc::block_solve_channels_last", _inference_only(
        "block_solve_channels_last", "wrc.ops.reverse_conv.block_solve, which routes to a differentiable solve"),
                                    setup_context=lambda ctx, inputs, output: None)


@torch.library.register_fake("wrc::lr_spectral_solve")
def _lr_spectral_solve_fake(t, eig, lam, alpha):
    torch._check(eig.shape == (t.shape[1], t.shape[2], t.shape[3] // 2 + 1))
    torch._check(lam.shape == t.shape[:2] and alpha.shape == t.shape[:2])
    return torch.empty_like(t)


@torch.library.register_fake("wrc::_lr_spectral_solve_backward")
def _lr_spectral_solve_backward_fake(grad, t, eig, lam, alpha):
    return torch.empty_like(t), torch.empty_like(eig), torch.empty_like(lam), torch.empty_like(alpha)


def _lr_spectral_solve_backward(ctx, grad):
    return torch.ops.wrc._lr_spectral_solve_backward(grad, *ctx.saved_tensors)


torch.library.register_autograd("wrc::lr_spectral_solve", _lr_spectral_solve_backward, setup_context=_setup_context)


@torch.library.register_fake("wrc::decimate")
def _decimate_fake(x, kernel, scale):
    torch._check(x.shape[-2] % scale == 0 and x.shape[-1] % scale == 0)
    return x.new_empty(x.shape[0], x.shape[1], x.shape[2] // scale, x.shape[3] // scale)


@torch.library.register_fake("wrc::decimate_adjoint")
def _decimate_adjoint_fake(y, kernel, scale):
    return y.new_empty(y.shape[0], y.shape[1], y.shape[2] * scale, y.shape[3] * scale)


@torch.library.register_fake("wrc::_decimate_kernel_grad")
def _decimate_kernel_grad_fake(y, x, kernel, scale):
    return torch.empty_like(kernel)


def _save_tensors_and_scale(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.scale = inputs[2]


def _decimate_backward(ctx, grad):
    x, kernel = ctx.saved_tensors
    grad_x = torch.ops.wrc.decimate_adjoint(grad, kernel, ctx.scale) if ctx.needs_input_grad[0] else None
    grad_k = torch.ops.wrc._decimate_kernel_grad(grad, x, kernel, ctx.scale) if ctx.needs_input_grad[1] else None
    return grad_x, grad_k, None


def _decimate_adjoint_backward(ctx, grad):
    y, kernel = ctx.saved_tensors
    grad_y = torch.ops.wrc.decimate(grad, kernel, ctx.scale) if ctx.needs_input_grad[0] else None
    grad_k = torch.ops.wrc._decimate_kernel_grad(y, grad, kernel, ctx.scale) if ctx.needs_input_grad[1] else None
    return grad_y, grad_k, None


torch.library.register_autograd("wrc::decimate", _decimate_backward, setup_context=_save_tensors_and_scale)
torch.library.register_autograd("wrc::decimate_adjoint", _decimate_adjoint_backward,
                                setup_context=_save_tensors_and_scale)


@torch.library.register_fake("wrc::adaptive_conv")
def _adaptive_conv_fake(input, filters):
    k = filters.shape[-1]
    torch._check(input.shape[-2] == filters.shape[1] + k - 1 and input.shape[-1] == filters.shape[2] + k - 1)
    return input.new_empty(input.shape[0], input.shape[1], filters.shape[1], filters.shape[2])


@torch.library.register_fake("wrc::_adaptive_conv_input_grad")
def _adaptive_conv_input_grad_fake(grad, filters):
    k = filters.shape[-1]
    return grad.new_empty(grad.shape[0], grad.shape[1], grad.shape[2] + k - 1, grad.shape[3] + k - 1)


@torch.library.register_fake("wrc::_adaptive_conv_filter_grad")
def _adaptive_conv_filter_grad_fake(grad, input, kernel_size):
    return grad.new_empty(grad.shape[0], grad.shape[2], grad.shape[3], kernel_size, kernel_size)


def _save_input_and_filters(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _adaptive_conv_backward(ctx, grad):
    input, filters = ctx.saved_tensors
    grad = grad.contiguous()
    grad_input = torch.ops.wrc._adaptive_conv_input_grad(grad, filters) if ctx.needs_input_grad[0] else None
    grad_filters = (torch.ops.wrc._adaptive_conv_filter_grad(grad, input, filters.shape[-1])
                    if ctx.needs_input_grad[1] else None)
    return grad_input, grad_filters


torch.library.register_autograd("wrc::adaptive_conv", _adaptive_conv_backward, setup_context=_save_input_and_filters)


def _neighbourhood_attention_fake(q, k, v, kernel, heads, average_heads, scale):
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4)
    torch._check(k.shape[:2] == q.shape[:2] and v.shape[0] == q.shape[0] and v.shape[2:] == k.shape[2:])
    return q.new_empty(q.shape[0], v.shape[1], q.shape[2], q.shape[3])


def _neighbourhood_attention_backward_fake(grad, q, k, v, kernel, heads, average_heads, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _save_attention_inputs(ctx, inputs, output) -> None:
    """Only q, k and v are kept: the backward recomputes the weights."""
    ctx.save_for_backward(*inputs[:3])
    ctx.settings = inputs[3:]  # kernel, heads, average_heads, scale


def _neighbourhood_attention_backward(ctx, grad):
    grads = torch.ops.wrc._neighbourhood_attention_backward(grad.contiguous(), *ctx.saved_tensors, *ctx.settings)
    return (*grads, None, None, None, None)


if hasattr(torch.ops.wrc, "neighbourhood_attention"):  # absent from a library built before the op existed
    torch.library.register_fake("wrc::neighbourhood_attention", _neighbourhood_attention_fake)
    torch.library.register_fake("wrc::_neighbourhood_attention_backward", _neighbourhood_attention_backward_fake)
    torch.library.register_autograd("wrc::neighbourhood_attention", _neighbourhood_attention_backward,
                                    setup_context=_save_attention_inputs)


@torch.library.register_fake("wrc::channel_moments")
def _channel_moments_fake(x):
    torch._check(x.dim() == 3)
    return x.new_empty(x.shape[0], x.shape[2], dtype=torch.float64), x.new_empty(x.shape[0], x.shape[2],
                                                                                   dtype=torch.float64)


if hasattr(torch.ops.wrc, "group_norm_scale_shift"):  # absent from a library built before the op existed
    @torch.library.register_fake("wrc::group_norm_scale_shift")
    def _group_norm_scale_shift_fake(x, groups, weight, bias, eps):
        torch._check(x.dim() == 3)
        return x.new_empty(x.shape[0], x.shape[2]), x.new_empty(x.shape[0], x.shape[2])


if hasattr(torch.ops.wrc, "channel_affine_"):  # absent from a library built before the op existed
    @torch.library.register_fake("wrc::channel_affine_")
    def _channel_affine_fake(x, scale, shift, residual, residual_scale, relu):
        torch._check(x.dim() == 3)


if hasattr(torch.ops.wrc, "winograd_conv3x3"):  # absent from a library built before the op existed
    @torch.library.register_fake("wrc::winograd_conv3x3")
    def _winograd_conv3x3_fake(x, weight, bias=None, tile=2):
        torch._check(x.dim() == 4 and weight.dim() == 4 and weight.shape[1] == x.shape[1])
        return torch.empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device,
                           memory_format=torch.channels_last)

    torch.library.register_autograd("wrc::winograd_conv3x3", _inference_only(
        "winograd_conv3x3", "torch.nn.functional.conv2d (wrc.ops.winograd.conv3x3 routes to it)"),
                                    setup_context=lambda ctx, inputs, output: None)


if hasattr(torch.ops.wrc, "pixel_mlp"):  # absent from a library built before the op existed
    @torch.library.register_fake("wrc::pixel_mlp")
    def _pixel_mlp_fake(x, w1, b1, w2, b2, relu):
        torch._check(x.dim() == 3 and w2.dim() == 2)
        return x.new_empty(x.shape[0], x.shape[1], w2.shape[0])

    @torch.library.register_fake("wrc::pixel_mlp_into")
    def _pixel_mlp_into_fake(out, x, w1, b1, w2, b2, relu):
        return None

    @torch.library.register_fake("wrc::pixel_mlp_moments")
    def _pixel_mlp_moments_fake(x, w1, b1, w2, b2):
        torch._check(x.dim() == 3 and w2.dim() == 2)
        return (x.new_empty(x.shape[0], w2.shape[0], dtype=torch.float64),
                x.new_empty(x.shape[0], w2.shape[0], dtype=torch.float64))

    for _name in ("pixel_mlp", "pixel_mlp_moments"):
        torch.library.register_autograd(f"wrc::{_name}", _inference_only(_name, f"wrc.ops.pixel_mlp.{_name}, whose "
                                                                                "PyTorch reference is differentiable"),
                                        setup_context=lambda ctx, inputs, output: None)
