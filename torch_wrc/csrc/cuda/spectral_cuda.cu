// CUDA kernels of wrc::lr_spectral_solve and its backward: cuFFT (through ATen) around fused passes over
// the half spectrum; per-plane gradients are reduced in shared memory (one thread block per plane).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launch.cuh"
#include "../checks.h"
#include "../spectral.h"

namespace wrc {
namespace {

template <typename scalar_t>
__global__ void multiply_kernel(c10::complex<scalar_t>* __restrict__ spectrum, const scalar_t* __restrict__ eig,
                                const scalar_t* __restrict__ lam, const scalar_t* __restrict__ alpha, int64_t C,
                                int64_t F, int64_t total) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t plane = index / F, f = index % F;
  spectrum[index] *= spectral_multiplier(eig[(plane % C) * F + f], lam[plane], alpha[plane]);
}

template <typename scalar_t>
__global__ void backward_kernel(c10::complex<scalar_t>* __restrict__ g_spec,
                                const c10::complex<scalar_t>* __restrict__ t_spec, const scalar_t* __restrict__ eig,
                                const scalar_t* __restrict__ lam, const scalar_t* __restrict__ alpha,
                                scalar_t* __restrict__ grad_lam, scalar_t* __restrict__ grad_alpha,
                                scalar_t* __restrict__ eig_terms, int64_t C, int64_t F, int64_t w, int64_t wf,
                                scalar_t inv_n) {
  __shared__ scalar_t partial_lam[kThreads];
  __shared__ scalar_t partial_alpha[kThreads];
  const int64_t plane = blockIdx.x;
  const scalar_t l = lam[plane], a = alpha[plane];
  const scalar_t* e = eig + (plane % C) * F;
  c10::complex<scalar_t>* g = g_spec + plane * F;
  const c10::complex<scalar_t>* t = t_spec + plane * F;
  scalar_t* et = eig_terms + plane * F;
  scalar_t sum_lam = 0, sum_alpha = 0;
  for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
    const scalar_t d = l * e[f] + a;
    const scalar_t p = hermitian_weight(f % wf, w) * inv_n * (g[f].real() * t[f].real() + g[f].imag() * t[f].imag());
    sum_lam += p * a / (d * d);
    sum_alpha -= p * l / (d * d);
    et[f] = -p * l * l / (d * d);
    g[f] *= l / d;
  }
  partial_lam[threadIdx.x] = sum_lam;
  partial_alpha[threadIdx.x] = sum_alpha;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      partial_lam[threadIdx.x] += partial_lam[threadIdx.x + stride];
      partial_alpha[threadIdx.x] += partial_alpha[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    grad_lam[plane] = partial_lam[0];
    grad_alpha[plane] = partial_alpha[0];
  }
}

at::Tensor lr_spectral_solve_cuda(const at::Tensor& t, const at::Tensor& eig_, const at::Tensor& lam_,
                                  const at::Tensor& alpha_) {
  check_spectral_args(t, eig_, lam_, alpha_);
  const c10::cuda::CUDAGuard guard(t.device());
  const auto eig = eig_.contiguous(), lam = lam_.contiguous(), alpha = alpha_.contiguous();
  const int64_t B = t.size(0), C = t.size(1), h = t.size(2), w = t.size(3), F = h * (w / 2 + 1);
  auto spectrum = at::fft_rfft2(t).contiguous();
  const int64_t total = B * C * F;
  if (total > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "wrc::lr_spectral_solve_cuda", [&] {
      multiply_kernel<scalar_t><<<num_blocks(total), kThreads, 0,
                                  stream>>>(spectrum.data_ptr<c10::complex<scalar_t>>(), eig.data_ptr<scalar_t>(),
                                            lam.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(), C, F, total);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return at::fft_irfft2(spectrum, at::IntArrayRef({h, w}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lr_spectral_solve_backward_cuda(
    const at::Tensor& grad, const at::Tensor& t, const at::Tensor& eig_, const at::Tensor& lam_,
    const at::Tensor& alpha_) {
  check_spectral_args(t, eig_, lam_, alpha_);
  TORCH_CHECK(grad.sizes() == t.sizes(), "wrc::_lr_spectral_solve_backward: grad must have t's shape");
  const c10::cuda::CUDAGuard guard(t.device());
  const auto eig = eig_.contiguous(), lam = lam_.contiguous(), alpha = alpha_.contiguous();
  const int64_t B = t.size(0), C = t.size(1), h = t.size(2), w = t.size(3), wf = w / 2 + 1, F = h * wf;
  auto g_spec = at::fft_rfft2(grad).contiguous();
  const auto t_spec = at::fft_rfft2(t).contiguous();
  auto grad_lam = at::empty_like(lam), grad_alpha = at::empty_like(alpha);
  auto eig_terms = at::empty({B, C, h, wf}, t.options());
  if (B * C > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "wrc::lr_spectral_solve_backward_cuda", [&] {
      backward_kernel<scalar_t><<<static_cast<unsigned int>(B * C), kThreads, 0, stream>>>(
          g_spec.data_ptr<c10::complex<scalar_t>>(), t_spec.data_ptr<c10::complex<scalar_t>>(),
          eig.data_ptr<scalar_t>(), lam.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
          grad_lam.data_ptr<scalar_t>(), grad_alpha.data_ptr<scalar_t>(), eig_terms.data_ptr<scalar_t>(), C, F, w,
          wf, scalar_t(1) / static_cast<scalar_t>(h * w));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto grad_t = at::fft_irfft2(g_spec, at::IntArrayRef({h, w}));
  return {grad_t, eig_terms.sum(0), grad_lam, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CUDA, m) {
  m.impl("lr_spectral_solve", &lr_spectral_solve_cuda);
  m.impl("_lr_spectral_solve_backward", &lr_spectral_solve_backward_cuda);
}

}  // namespace wrc
