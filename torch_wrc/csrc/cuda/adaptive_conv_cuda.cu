// CUDA kernels of wrc::adaptive_conv and its two gradients, on the current stream, 64-bit indexing,
// float32 / float64 / float16 / bfloat16 storage with float (double) accumulation. Every kernel is a
// gather, so there are no atomics; the filter gradient covers every tap: one grid row per tap
// (blockIdx.y = tap), unlike FeatUp's kernel, whose tap index blockIdx.z * blockIdx.z reaches 7 of 49.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launch.cuh"
#include "../checks.h"

namespace wrc {
namespace {

// One thread per output element (b, c, y, x), x fastest: input reads are coalesced.
template <typename scalar_t>
__global__ void adaptive_conv_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ filters,
                                     scalar_t* __restrict__ out, int64_t C, int64_t H, int64_t W, int64_t k,
                                     int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t x = index % W, y = (index / W) % H, plane = index / (H * W), b = plane / C;
  const int64_t Hp = H + k - 1, Wp = W + k - 1;
  const scalar_t* filter = filters + ((b * H + y) * W + x) * k * k;
  const scalar_t* src = input + (plane * Hp + y) * Wp + x;
  acc_t acc = 0;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j)
      acc += static_cast<acc_t>(filter[i * k + j]) * static_cast<acc_t>(src[i * Wp + j]);
  out[index] = static_cast<scalar_t>(acc);
}

// One thread per padded input element (b, c, yy, xx), gathering from the outputs whose window covers it.
template <typename scalar_t>
__global__ void adaptive_conv_input_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ filters,
                                                scalar_t* __restrict__ grad_input, int64_t C, int64_t H, int64_t W,
                                                int64_t k, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const int64_t Hp = H + k - 1, Wp = W + k - 1;
  const int64_t xx = index % Wp, yy = (index / Wp) % Hp, plane = index / (Hp * Wp), b = plane / C;
  acc_t acc = 0;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t y = yy - i;
    if (y < 0 || y >= H) continue;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t x = xx - j;
      if (x < 0 || x >= W) continue;
      acc += static_cast<acc_t>(grad[(plane * H + y) * W + x]) *
             static_cast<acc_t>(filters[((b * H + y) * W + x) * k * k + i * k + j]);
    }
  }
  grad_input[index] = static_cast<scalar_t>(acc);
}

// One thread per (pixel, tap): blockIdx.y is the tap, so all k * k taps get their gradient.
template <typename scalar_t>
__global__ void adaptive_conv_filter_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                                                 scalar_t* __restrict__ grad_filters, int64_t C, int64_t H, int64_t W,
                                                 int64_t k, int64_t pixels) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pixel >= pixels) return;
  const int64_t tap = blockIdx.y, i = tap / k, j = tap % k;
  const int64_t b = pixel / (H * W), yx = pixel % (H * W), y = yx / W, x = yx % W;
  const int64_t Hp = H + k - 1, Wp = W + k - 1;
  acc_t acc = 0;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t plane = b * C + c;
    acc += static_cast<acc_t>(grad[plane * H * W + yx]) * static_cast<acc_t>(input[(plane * Hp + y + i) * Wp + x + j]);
  }
  grad_filters[pixel * k * k + tap] = static_cast<scalar_t>(acc);
}

at::Tensor adaptive_conv_cuda(const at::Tensor& input_, const at::Tensor& filters_) {
  check_adaptive_conv_args("wrc::adaptive_conv", input_, filters_);
  const c10::cuda::CUDAGuard guard(input_.device());
  const auto input = input_.contiguous(), filters = filters_.contiguous();
  const int64_t B = input.size(0), C = input.size(1), H = filters.size(1), W = filters.size(2), k = filters.size(3);
  auto out = at::empty({B, C, H, W}, input.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "wrc::adaptive_conv_cuda", [&] {
    adaptive_conv_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        input.data_ptr<scalar_t>(), filters.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), C, H, W, k, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor adaptive_conv_input_grad_cuda(const at::Tensor& grad_, const at::Tensor& filters_) {
  TORCH_CHECK(filters_.dim() == 5 && filters_.size(3) == filters_.size(4),
              "wrc::_adaptive_conv_input_grad: filters must be (B, H, W, k, k); got ", filters_.sizes());
  check_adaptive_conv_grad("wrc::_adaptive_conv_input_grad", grad_, filters_, filters_.size(0), filters_.size(1),
                           filters_.size(2));
  const c10::cuda::CUDAGuard guard(grad_.device());
  const auto grad = grad_.contiguous(), filters = filters_.contiguous();
  const int64_t B = grad.size(0), C = grad.size(1), H = grad.size(2), W = grad.size(3), k = filters.size(3);
  auto grad_input = at::empty({B, C, H + k - 1, W + k - 1}, grad.options());
  const int64_t total = grad_input.numel();
  if (total == 0) return grad_input;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "wrc::adaptive_conv_input_grad", [&] {
    adaptive_conv_input_grad_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), filters.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(), C, H, W, k, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_input;
}

at::Tensor adaptive_conv_filter_grad_cuda(const at::Tensor& grad_, const at::Tensor& input_, int64_t k) {
  TORCH_CHECK(k >= 1 && k * k <= 65535, "wrc::_adaptive_conv_filter_grad: kernel_size must be in [1, 255]; got ", k);
  TORCH_CHECK(input_.dim() == 4, "wrc::_adaptive_conv_filter_grad: input must be (B, C, H + k - 1, W + k - 1)");
  const int64_t H = input_.size(2) - k + 1, W = input_.size(3) - k + 1;
  check_adaptive_conv_grad("wrc::_adaptive_conv_filter_grad", grad_, input_, input_.size(0), H, W);
  TORCH_CHECK(grad_.size(1) == input_.size(1), "wrc::_adaptive_conv_filter_grad: grad and input channels differ");
  const c10::cuda::CUDAGuard guard(grad_.device());
  const auto grad = grad_.contiguous(), input = input_.contiguous();
  const int64_t B = grad.size(0), C = grad.size(1);
  auto grad_filters = at::empty({B, H, W, k, k}, grad.options());
  const int64_t pixels = B * H * W;
  if (grad_filters.numel() == 0) return grad_filters;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(num_blocks(pixels), static_cast<unsigned int>(k * k));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "wrc::adaptive_conv_filter_grad", [&] {
    adaptive_conv_filter_grad_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), grad_filters.data_ptr<scalar_t>(), C, H, W, k, pixels);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_filters;
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CUDA, m) {
  m.impl("adaptive_conv", &adaptive_conv_cuda);
  m.impl("_adaptive_conv_input_grad", &adaptive_conv_input_grad_cuda);
  m.impl("_adaptive_conv_filter_grad", &adaptive_conv_filter_grad_cuda);
}

}  // namespace wrc
