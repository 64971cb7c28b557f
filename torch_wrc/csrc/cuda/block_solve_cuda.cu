// CUDA kernels of wrc::block_solve and its backward: one thread per token block, on the current
// stream, 64-bit indexing, float32 and float64; the backward reduces the kernel gradient per thread block.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "launch.cuh"
#include "../block_solve.h"
#include "../checks.h"

namespace wrc {
namespace {

template <typename scalar_t>
__global__ void block_solve_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ z,
                                   const scalar_t* __restrict__ kernel, const scalar_t* __restrict__ w_low,
                                   const scalar_t* __restrict__ w_high, scalar_t* __restrict__ x, int64_t C,
                                   int64_t h, int64_t w, int64_t s, int64_t total) {
  const int64_t cell = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell >= total) return;
  const int64_t plane = cell / (h * w), ij = cell % (h * w), i = ij / w, j = ij % w, c = plane % C;
  const int64_t hr = plane * h * s * w * s;
  block_forward(z + hr, w_high + hr, kernel + c * s * s, y[cell], w_low[cell], i, j, s, w * s, x + hr);
}

// One thread per token block; each thread block covers kThreads consecutive tokens of one plane (blockIdx.x =
// plane * chunks + chunk). The kernel gradient is reduced over the thread block in shared memory, one tap at a
// time, into partial[plane, chunk, tap]: B C chunks s^2 values (1 / kThreads of the token count), not one s x s
// slot per token (an HR-sized buffer). Fixed reduction order: deterministic, no atomics (as on the CPU).
template <typename scalar_t>
__global__ void block_solve_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ y,
                                            const scalar_t* __restrict__ z, const scalar_t* __restrict__ kernel,
                                            const scalar_t* __restrict__ w_low, const scalar_t* __restrict__ w_high,
                                            scalar_t* __restrict__ grad_y, scalar_t* __restrict__ grad_z,
                                            scalar_t* __restrict__ grad_wl, scalar_t* __restrict__ grad_wh,
                                            scalar_t* __restrict__ partial, int64_t C, int64_t h, int64_t w,
                                            int64_t s, int64_t chunks) {
  __shared__ scalar_t sums[kThreads];  // blockDim.x == kThreads, a power of two
  const int64_t plane = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t ij = chunk * blockDim.x + threadIdx.x;
  const bool active = ij < h * w;  // inactive threads add zeros but still take part in every __syncthreads
  const int64_t i = active ? ij / w : 0, j = active ? ij % w : 0, cell = plane * h * w + ij, W = w * s;
  const int64_t hr = plane * h * s * W;
  const scalar_t* kappa = kernel + (plane % C) * s * s;
  scalar_t g = 0, r = 0, u = 0;
  if (active)
    block_backward_scalars(grad + hr, z + hr, w_high + hr, kappa, y[cell], w_low[cell], i, j, s, W, grad_y + cell,
                           grad_wl + cell, &g, &r, &u);
  for (int64_t t = 0; t < s * s; ++t) {
    scalar_t term = 0;
    if (active) {
      const int64_t n = hr + hr_index(i, j, t / s, t % s, s, W);
      term = block_backward_tap(grad[n], z[n], w_high[n], kappa[t], g, r, u, grad_z + n, grad_wh + n);
    }
    sums[threadIdx.x] = term;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[static_cast<int64_t>(blockIdx.x) * s * s + t] = sums[0];
    __syncthreads();  // sums[0] is read before the next tap overwrites the buffer
  }
}

at::Tensor block_solve_cuda(const at::Tensor& y_, const at::Tensor& z_, const at::Tensor& kernel_,
                            const at::Tensor& w_low_, const at::Tensor& w_high_) {
  check_block_solve_args(y_, z_, kernel_, w_low_, w_high_);
  const c10::cuda::CUDAGuard guard(y_.device());
  const auto y = y_.contiguous(), z = z_.contiguous(), kernel = kernel_.contiguous();
  const auto w_low = w_low_.contiguous(), w_high = w_high_.contiguous();
  auto x = at::empty_like(z);
  const int64_t C = y.size(1), h = y.size(2), w = y.size(3), s = kernel.size(1), total = y.numel();
  if (total == 0) return x;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "wrc::block_solve_cuda", [&] {
    block_solve_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        y.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), w_low.data_ptr<scalar_t>(),
        w_high.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), C, h, w, s, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> block_solve_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& y_, const at::Tensor& z_, const at::Tensor& kernel_,
    const at::Tensor& w_low_, const at::Tensor& w_high_) {
  check_block_solve_args(y_, z_, kernel_, w_low_, w_high_);
  TORCH_CHECK(grad_.sizes() == z_.sizes(), "wrc::_block_solve_backward: grad must have z's shape");
  const c10::cuda::CUDAGuard guard(y_.device());
  const auto grad = grad_.contiguous(), y = y_.contiguous(), z = z_.contiguous(), kernel = kernel_.contiguous();
  const auto w_low = w_low_.contiguous(), w_high = w_high_.contiguous();
  auto grad_y = at::empty_like(y), grad_z = at::empty_like(z), grad_wl = at::empty_like(w_low);
  auto grad_wh = at::empty_like(w_high);
  const int64_t B = y.size(0), C = y.size(1), h = y.size(2), w = y.size(3), s = kernel.size(1);
  const int64_t chunks = (h * w + kThreads - 1) / kThreads, thread_blocks = B * C * chunks;
  TORCH_CHECK(thread_blocks <= std::numeric_limits<int32_t>::max(),
              "wrc::_block_solve_backward: too many token blocks for one launch (", thread_blocks, " thread blocks)");
  auto partial = at::empty({B, C, chunks, s, s}, y.options());  // every entry is written (or there are none)
  if (thread_blocks > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "wrc::block_solve_backward_cuda", [&] {
      block_solve_backward_kernel<scalar_t><<<static_cast<unsigned int>(thread_blocks), kThreads, 0, stream>>>(
          grad.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(),
          w_low.data_ptr<scalar_t>(), w_high.data_ptr<scalar_t>(), grad_y.data_ptr<scalar_t>(),
          grad_z.data_ptr<scalar_t>(), grad_wl.data_ptr<scalar_t>(), grad_wh.data_ptr<scalar_t>(),
          partial.data_ptr<scalar_t>(), C, h, w, s, chunks);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto grad_kernel = partial.sum({0, 2});  // C, s, s
  return {grad_y, grad_z, grad_kernel, grad_wl, grad_wh};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CUDA, m) {
  m.impl("block_solve", &block_solve_cuda);
  m.impl("_block_solve_backward", &block_solve_backward_cuda);
}

}  // namespace wrc
