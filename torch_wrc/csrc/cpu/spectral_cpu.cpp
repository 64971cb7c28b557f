// CPU kernels of wrc::lr_spectral_solve and its backward: ATen's rfft2/irfft2 around one fused pass over
// the half spectrum (the multiplier is never materialised; gradients are reduced per plane in registers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../spectral.h"

namespace wrc {
namespace {

at::Tensor lr_spectral_solve_cpu(const at::Tensor& t, const at::Tensor& eig_, const at::Tensor& lam_,
                                 const at::Tensor& alpha_) {
  check_spectral_args(t, eig_, lam_, alpha_);
  const auto eig = eig_.contiguous(), lam = lam_.contiguous(), alpha = alpha_.contiguous();
  const int64_t B = t.size(0), C = t.size(1), h = t.size(2), w = t.size(3), F = h * (w / 2 + 1);
  auto spectrum = at::fft_rfft2(t).contiguous();
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "wrc::lr_spectral_solve_cpu", [&] {
    auto* sp = spectrum.data_ptr<c10::complex<scalar_t>>();
    const scalar_t *ep = eig.data_ptr<scalar_t>(), *lp = lam.data_ptr<scalar_t>(), *ap = alpha.data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t l = lp[plane], a = ap[plane];
        const scalar_t* e = ep + (plane % C) * F;
        auto* s = sp + plane * F;
        for (int64_t f = 0; f < F; ++f) s[f] *= spectral_multiplier(e[f], l, a);
      }
    });
  });
  return at::fft_irfft2(spectrum, at::IntArrayRef({h, w}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lr_spectral_solve_backward_cpu(
    const at::Tensor& grad, const at::Tensor& t, const at::Tensor& eig_, const at::Tensor& lam_,
    const at::Tensor& alpha_) {
  check_spectral_args(t, eig_, lam_, alpha_);
  TORCH_CHECK(grad.sizes() == t.sizes(), "wrc::_lr_spectral_solve_backward: grad must have t's shape");
  const auto eig = eig_.contiguous(), lam = lam_.contiguous(), alpha = alpha_.contiguous();
  const int64_t B = t.size(0), C = t.size(1), h = t.size(2), w = t.size(3), wf = w / 2 + 1, F = h * wf;
  auto g_spec = at::fft_rfft2(grad).contiguous();
  const auto t_spec = at::fft_rfft2(t).contiguous();
  auto grad_lam = at::empty_like(lam), grad_alpha = at::empty_like(alpha);
  auto eig_terms = at::empty({B, C, h, wf}, t.options());  // per-batch contributions, summed over B below
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "wrc::lr_spectral_solve_backward_cpu", [&] {
    auto* gp = g_spec.data_ptr<c10::complex<scalar_t>>();
    const auto* tp = t_spec.data_ptr<c10::complex<scalar_t>>();
    const scalar_t *ep = eig.data_ptr<scalar_t>(), *lp = lam.data_ptr<scalar_t>(), *ap = alpha.data_ptr<scalar_t>();
    scalar_t *glp = grad_lam.data_ptr<scalar_t>(), *gap = grad_alpha.data_ptr<scalar_t>();
    scalar_t* etp = eig_terms.data_ptr<scalar_t>();
    const scalar_t inv_n = scalar_t(1) / static_cast<scalar_t>(h * w);
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t l = lp[plane], a = ap[plane];
        const scalar_t* e = ep + (plane % C) * F;
        auto* g = gp + plane * F;
        const auto* tt = tp + plane * F;
        scalar_t* et = etp + plane * F;
        scalar_t sum_lam = 0, sum_alpha = 0;
        for (int64_t f = 0; f < F; ++f) {
          const scalar_t d = l * e[f] + a;
          const scalar_t p = hermitian_weight(f % wf, w) * inv_n * (g[f].real() * tt[f].real() + g[f].imag() * tt[f].imag());
          sum_lam += p * a / (d * d);
          sum_alpha -= p * l / (d * d);
          et[f] = -p * l * l / (d * d);
          g[f] *= l / d;  // G becomes m * G for grad_t
        }
        glp[plane] = sum_lam;
        gap[plane] = sum_alpha;
      }
    });
  });
  auto grad_t = at::fft_irfft2(g_spec, at::IntArrayRef({h, w}));
  return {grad_t, eig_terms.sum(0), grad_lam, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) {
  m.impl("lr_spectral_solve", &lr_spectral_solve_cpu);
  m.impl("_lr_spectral_solve_backward", &lr_spectral_solve_backward_cpu);
}

}  // namespace wrc
