// CUDA kernels of the forward model A (wrc::decimate), its adjoint (a gather, one thread per HR cell) and
// their kernel gradient (one thread block per (plane, tap), reduced in shared memory; no atomics).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launch.cuh"
#include "../checks.h"
#include "../decimate.h"

namespace wrc {
namespace {

template <typename scalar_t>
__global__ void decimate_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ kernel,
                                scalar_t* __restrict__ y, int64_t C, int64_t h, int64_t w, int64_t s, int64_t k,
                                int64_t o, int64_t total) {
  const int64_t cell = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell >= total) return;
  const int64_t plane = cell / (h * w), ij = cell % (h * w);
  y[cell] = decimate_cell(x + plane * h * s * w * s, kernel + (plane % C) * k * k, ij / w, ij % w, s, k, o, h * s,
                          w * s);
}

template <typename scalar_t>
__global__ void adjoint_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ kernel,
                               scalar_t* __restrict__ x, int64_t C, int64_t h, int64_t w, int64_t s, int64_t k,
                               int64_t o, int64_t total) {
  const int64_t cell = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell >= total) return;
  const int64_t W = w * s, plane = cell / (h * s * W), mn = cell % (h * s * W);
  x[cell] = adjoint_cell(y + plane * h * w, kernel + (plane % C) * k * k, mn / W, mn % W, s, k, o, h, w);
}

template <typename scalar_t>
__global__ void kernel_grad_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ x,
                                   scalar_t* __restrict__ partial, int64_t h, int64_t w, int64_t s, int64_t k,
                                   int64_t o) {
  __shared__ scalar_t sums[kThreads];
  const int64_t index = blockIdx.x, plane = index / (k * k), t = index % (k * k);
  sums[threadIdx.x] = kernel_grad_tap(y + plane * h * w, x + plane * h * s * w * s, t / k, t % k, s, o, h, w,
                                      static_cast<int64_t>(threadIdx.x), static_cast<int64_t>(blockDim.x));
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[index] = sums[0];
}

at::Tensor decimate_cuda(const at::Tensor& x_, const at::Tensor& kernel_, int64_t s) {
  TORCH_CHECK(s >= 1, "wrc::decimate: scale must be >= 1; got ", s);  // before any % s (0 would raise SIGFPE)
  TORCH_CHECK(x_.dim() == 4 && x_.size(2) % s == 0 && x_.size(3) % s == 0,
              "wrc::decimate: x must be (B, C, s h, s w); got ", x_.sizes(), " for scale ", s);
  const c10::cuda::CUDAGuard guard(x_.device());
  auto y = at::empty({x_.size(0), x_.size(1), x_.size(2) / s, x_.size(3) / s}, x_.options());
  check_decimate_args("wrc::decimate", y, x_, kernel_, s);
  const auto x = x_.contiguous(), kernel = kernel_.contiguous();
  const int64_t k = kernel.size(1), total = y.numel();
  if (total == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "wrc::decimate_cuda", [&] {
    decimate_kernel<scalar_t><<<num_blocks(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), y.size(1), y.size(2), y.size(3),
        s, k, (k - s) / 2, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor decimate_adjoint_cuda(const at::Tensor& y_, const at::Tensor& kernel_, int64_t s) {
  TORCH_CHECK(y_.dim() == 4, "wrc::decimate_adjoint: y must be (B, C, h, w); got ", y_.sizes());
  const c10::cuda::CUDAGuard guard(y_.device());
  auto x = at::empty({y_.size(0), y_.size(1), y_.size(2) * s, y_.size(3) * s}, y_.options());
  check_decimate_args("wrc::decimate_adjoint", y_, x, kernel_, s);
  const auto y = y_.contiguous(), kernel = kernel_.contiguous();
  const int64_t k = kernel.size(1), total = x.numel();
  if (total == 0) return x;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "wrc::decimate_adjoint_cuda", [&] {
    adjoint_kernel<scalar_t><<<num_blocks(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        y.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.size(1), y.size(2), y.size(3),
        s, k, (k - s) / 2, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return x;
}

at::Tensor decimate_kernel_grad_cuda(const at::Tensor& y_, const at::Tensor& x_, const at::Tensor& kernel,
                                     int64_t s) {
  check_decimate_args("wrc::_decimate_kernel_grad", y_, x_, kernel, s);
  const c10::cuda::CUDAGuard guard(y_.device());
  const auto y = y_.contiguous(), x = x_.contiguous();
  const int64_t B = y.size(0), C = y.size(1), k = kernel.size(1);
  auto partial = at::empty({B, C, k, k}, y.options());
  if (partial.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "wrc::decimate_kernel_grad_cuda", [&] {
      kernel_grad_kernel<scalar_t><<<static_cast<unsigned int>(partial.numel()), kThreads, 0,
                                     c10::cuda::getCurrentCUDAStream()>>>(
          y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), partial.data_ptr<scalar_t>(), y.size(2), y.size(3), s, k,
          (k - s) / 2);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return partial.sum(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CUDA, m) {
  m.impl("decimate", &decimate_cuda);
  m.impl("decimate_adjoint", &decimate_adjoint_cuda);
  m.impl("_decimate_kernel_grad", &decimate_kernel_grad_cuda);
}

}  // namespace wrc
