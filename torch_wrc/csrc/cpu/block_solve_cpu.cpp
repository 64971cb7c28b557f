// CPU kernels of wrc::block_solve and its backward: one task per row of token blocks (at::parallel_for).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../block_solve.h"
#include "../checks.h"

namespace wrc {
namespace {

at::Tensor block_solve_cpu(const at::Tensor& y_, const at::Tensor& z_, const at::Tensor& kernel_,
                           const at::Tensor& w_low_, const at::Tensor& w_high_) {
  check_block_solve_args(y_, z_, kernel_, w_low_, w_high_);
  const auto y = y_.contiguous(), z = z_.contiguous(), kernel = kernel_.contiguous();
  const auto w_low = w_low_.contiguous(), w_high = w_high_.contiguous();
  auto x = at::empty_like(z);
  const int64_t B = y.size(0), C = y.size(1), h = y.size(2), w = y.size(3), s = kernel.size(1);
  const int64_t H = h * s, W = w * s;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "wrc::block_solve_cpu", [&] {
    const scalar_t *yp = y.data_ptr<scalar_t>(), *zp = z.data_ptr<scalar_t>(), *kp = kernel.data_ptr<scalar_t>();
    const scalar_t *wlp = w_low.data_ptr<scalar_t>(), *whp = w_high.data_ptr<scalar_t>();
    scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, B * C * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t plane = row / h, i = row % h, c = plane % C;
        const int64_t lr = plane * h * w, hr = plane * H * W;
        for (int64_t j = 0; j < w; ++j)
          block_forward(zp + hr, whp + hr, kp + c * s * s, yp[lr + i * w + j], wlp[lr + i * w + j], i, j, s, W,
                        xp + hr);
      }
    });
  });
  return x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> block_solve_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& y_, const at::Tensor& z_, const at::Tensor& kernel_,
    const at::Tensor& w_low_, const at::Tensor& w_high_) {
  check_block_solve_args(y_, z_, kernel_, w_low_, w_high_);
  TORCH_CHECK(grad_.sizes() == z_.sizes(), "wrc::_block_solve_backward: grad must have z's shape");
  const auto grad = grad_.contiguous(), y = y_.contiguous(), z = z_.contiguous(), kernel = kernel_.contiguous();
  const auto w_low = w_low_.contiguous(), w_high = w_high_.contiguous();
  auto grad_y = at::empty_like(y), grad_z = at::empty_like(z), grad_wl = at::empty_like(w_low);
  auto grad_wh = at::empty_like(w_high);
  const int64_t B = y.size(0), C = y.size(1), h = y.size(2), w = y.size(3), s = kernel.size(1);
  const int64_t H = h * s, W = w * s;
  // One s*s partial kernel gradient per row of blocks, summed afterwards: deterministic, no atomics.
  auto partial = at::zeros({B, C, h, s, s}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "wrc::block_solve_backward_cpu", [&] {
    const scalar_t *gp = grad.data_ptr<scalar_t>(), *yp = y.data_ptr<scalar_t>(), *zp = z.data_ptr<scalar_t>();
    const scalar_t *kp = kernel.data_ptr<scalar_t>(), *wlp = w_low.data_ptr<scalar_t>();
    const scalar_t* whp = w_high.data_ptr<scalar_t>();
    scalar_t *gyp = grad_y.data_ptr<scalar_t>(), *gzp = grad_z.data_ptr<scalar_t>();
    scalar_t *gwlp = grad_wl.data_ptr<scalar_t>(), *gwhp = grad_wh.data_ptr<scalar_t>();
    scalar_t* pp = partial.data_ptr<scalar_t>();
    at::parallel_for(0, B * C * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t plane = row / h, i = row % h, c = plane % C;
        const int64_t lr = plane * h * w, hr = plane * H * W;
        for (int64_t j = 0; j < w; ++j)
          block_backward(gp + hr, zp + hr, whp + hr, kp + c * s * s, yp[lr + i * w + j], wlp[lr + i * w + j], i,
                         j, s, W, gzp + hr, gwhp + hr, gyp + lr + i * w + j, gwlp + lr + i * w + j,
                         pp + row * s * s);
      }
    });
  });
  auto grad_kernel = partial.sum({0, 2});  // C, s, s
  return {grad_y, grad_z, grad_kernel, grad_wl, grad_wh};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) {
  m.impl("block_solve", &block_solve_cpu);
  m.impl("_block_solve_backward", &block_solve_backward_cpu);
}

}  // namespace wrc
