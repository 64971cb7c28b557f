// CPU kernels of the forward model A (wrc::decimate), its adjoint and their kernel gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../decimate.h"

namespace wrc {
namespace {

at::Tensor decimate_cpu(const at::Tensor& x_, const at::Tensor& kernel_, int64_t s) {
  TORCH_CHECK(s >= 1, "wrc::decimate: scale must be >= 1; got ", s);  // before any % s (0 would raise SIGFPE)
  TORCH_CHECK(x_.dim() == 4 && x_.size(2) % s == 0 && x_.size(3) % s == 0,
              "wrc::decimate: x must be (B, C, s h, s w); got ", x_.sizes(), " for scale ", s);
  auto y = at::empty({x_.size(0), x_.size(1), x_.size(2) / s, x_.size(3) / s}, x_.options());
  check_decimate_args("wrc::decimate", y, x_, kernel_, s);
  const auto x = x_.contiguous(), kernel = kernel_.contiguous();
  const int64_t C = y.size(1), h = y.size(2), w = y.size(3), k = kernel.size(1), o = (k - s) / 2;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "wrc::decimate_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *kp = kernel.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, y.size(0) * C * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t plane = row / h, i = row % h;
        for (int64_t j = 0; j < w; ++j)
          yp[row * w + j] = decimate_cell(xp + plane * h * s * w * s, kp + (plane % C) * k * k, i, j, s, k, o, h * s,
                                          w * s);
      }
    });
  });
  return y;
}

at::Tensor decimate_adjoint_cpu(const at::Tensor& y_, const at::Tensor& kernel_, int64_t s) {
  TORCH_CHECK(y_.dim() == 4, "wrc::decimate_adjoint: y must be (B, C, h, w); got ", y_.sizes());
  auto x = at::empty({y_.size(0), y_.size(1), y_.size(2) * s, y_.size(3) * s}, y_.options());
  check_decimate_args("wrc::decimate_adjoint", y_, x, kernel_, s);
  const auto y = y_.contiguous(), kernel = kernel_.contiguous();
  const int64_t C = y.size(1), h = y.size(2), w = y.size(3), k = kernel.size(1), o = (k - s) / 2;
  const int64_t H = h * s, W = w * s;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "wrc::decimate_adjoint_cpu", [&] {
    const scalar_t *yp = y.data_ptr<scalar_t>(), *kp = kernel.data_ptr<scalar_t>();
    scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0) * C * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t plane = row / H, m = row % H;
        for (int64_t n = 0; n < W; ++n)
          xp[row * W + n] = adjoint_cell(yp + plane * h * w, kp + (plane % C) * k * k, m, n, s, k, o, h, w);
      }
    });
  });
  return x;
}

at::Tensor decimate_kernel_grad_cpu(const at::Tensor& y_, const at::Tensor& x_, const at::Tensor& kernel,
                                    int64_t s) {
  check_decimate_args("wrc::_decimate_kernel_grad", y_, x_, kernel, s);
  const auto y = y_.contiguous(), x = x_.contiguous();
  const int64_t B = y.size(0), C = y.size(1), h = y.size(2), w = y.size(3), k = kernel.size(1), o = (k - s) / 2;
  auto partial = at::empty({B, C, k, k}, y.options());  // per plane, summed over the batch below
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "wrc::decimate_kernel_grad_cpu", [&] {
    const scalar_t *yp = y.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
    scalar_t* pp = partial.data_ptr<scalar_t>();
    at::parallel_for(0, B * C * k * k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t plane = index / (k * k), t = index % (k * k);
        pp[index] = kernel_grad_tap(yp + plane * h * w, xp + plane * h * s * w * s, t / k, t % k, s, o, h, w, 0, 1);
      }
    });
  });
  return partial.sum(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) {
  m.impl("decimate", &decimate_cpu);
  m.impl("decimate_adjoint", &decimate_adjoint_cpu);
  m.impl("_decimate_kernel_grad", &decimate_kernel_grad_cpu);
}

}  // namespace wrc
