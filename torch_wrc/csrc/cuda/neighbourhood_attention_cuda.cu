// CUDA kernels of wrc::neighbourhood_attention and its backward, on the current stream (geometry in
// ../neighbourhood_attention.h). One 128-thread block per output pixel: its query (and upstream gradient) and the
// heads x k^2 weights of its window sit in shared memory, the softmax runs one warp per head; tokens are read from
// channel-last copies in the accumulation type (float for float32 / float16 / bfloat16, double for float64), so the
// value and key loops over channels are coalesced. The backward keeps nothing from the forward: it recomputes the
// weights, writes dq per pixel and adds dk and dv into channel-last accumulators with atomics (a token receives
// from every pixel whose window holds it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "../neighbourhood_attention.h"

namespace wrc {
namespace {

constexpr int kPixelThreads = 128;  // one block per output pixel: 4 warps
constexpr int64_t kSharedBytes = 48 * 1024;

struct Sizes {
  int64_t D, C, Ho, Wo, h, w, kernel, kk, heads, dh, cg;
  bool average;
};

Sizes sizes_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t kernel, int64_t heads,
               bool average) {
  Sizes s;
  s.D = q.size(1), s.C = v.size(1), s.Ho = q.size(2), s.Wo = q.size(3), s.h = k.size(2), s.w = k.size(3);
  s.kernel = kernel, s.kk = kernel * kernel, s.heads = heads, s.dh = s.D / heads;
  s.cg = average ? s.C : s.C / heads, s.average = average;
  return s;
}

template <typename T>
__device__ __forceinline__ T warp_max(T value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, value, offset);
    value = other > value ? other : value;
  }
  return value;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }

// Offset of tap t's token from the window's first token, in tokens of the channel-last grid.
__device__ __forceinline__ int64_t tap_offset(const Sizes& s, int64_t t) { return (t / s.kernel) * s.w + t % s.kernel; }

// p[head * kk + t] = softmax over taps t of scale * q_head . k_head(t); `q` in shared memory, `keys` the
// channel-last keys at the window's first token. Ends synchronised.
template <typename T>
__device__ void window_softmax(const Sizes& s, const T* q, const T* __restrict__ keys, T scale, T* p) {
  for (int64_t e = threadIdx.x; e < s.heads * s.kk; e += blockDim.x) {
    const int64_t head = e / s.kk;
    const T* key = keys + tap_offset(s, e % s.kk) * s.D + head * s.dh;
    const T* qh = q + head * s.dh;
    T acc = 0;
    for (int64_t d = 0; d < s.dh; ++d) acc += qh[d] * key[d];
    p[e] = scale * acc;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  for (int64_t head = threadIdx.x / 32; head < s.heads; head += blockDim.x / 32) {
    T* ph = p + head * s.kk;
    T top = -std::numeric_limits<T>::infinity();
    for (int64_t t = lane; t < s.kk; t += 32) top = ph[t] > top ? ph[t] : top;
    top = warp_max(top);
    T sum = 0;
    for (int64_t t = lane; t < s.kk; t += 32) sum += (ph[t] = exp_of(ph[t] - top));
    const T inv = T(1) / warp_sum(sum);
    for (int64_t t = lane; t < s.kk; t += 32) ph[t] *= inv;
  }
  __syncthreads();
}

// The weights of each value group: p itself, or (average_heads) the mean over heads written to `mean`.
template <typename T>
__device__ const T* group_weights(const Sizes& s, const T* p, T* mean) {
  if (!s.average) return p;
  for (int64_t t = threadIdx.x; t < s.kk; t += blockDim.x) {
    T acc = 0;
    for (int64_t head = 0; head < s.heads; ++head) acc += p[head * s.kk + t];
    mean[t] = acc / T(s.heads);
  }
  __syncthreads();
  return mean;
}

struct Pixel {
  int64_t b, yx, first;  // batch, y * Wo + x, the window's first token in the (B, h, w) grid
};

__device__ __forceinline__ Pixel pixel_of(const Sizes& s) {
  const int64_t plane = s.Ho * s.Wo, b = blockIdx.x / plane, yx = blockIdx.x % plane;
  const int64_t rs = window_start(yx / s.Wo, s.Ho, s.h, s.kernel), cs = window_start(yx % s.Wo, s.Wo, s.w, s.kernel);
  return {b, yx, (b * s.h + rs) * s.w + cs};
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kPixelThreads)
    neighbourhood_attention_kernel(const scalar_t* __restrict__ q, const T* __restrict__ keys,
                                   const T* __restrict__ values, scalar_t* __restrict__ out, Sizes s, T scale) {
  extern __shared__ __align__(sizeof(double)) unsigned char shared[];
  T* sq = reinterpret_cast<T*>(shared);  // D
  T* p = sq + s.D;                        // heads * kk
  T* mean = p + s.heads * s.kk;           // kk
  const Pixel px = pixel_of(s);
  const int64_t plane = s.Ho * s.Wo;
  for (int64_t d = threadIdx.x; d < s.D; d += blockDim.x) sq[d] = static_cast<T>(q[(px.b * s.D + d) * plane + px.yx]);
  __syncthreads();
  window_softmax(s, sq, keys + px.first * s.D, scale, p);
  const T* weights = group_weights(s, p, mean);
  for (int64_t c = threadIdx.x; c < s.C; c += blockDim.x) {
    const T* wg = weights + (s.average ? 0 : c / s.cg) * s.kk;
    T acc = 0;
    for (int64_t t = 0; t < s.kk; ++t) acc += wg[t] * values[(px.first + tap_offset(s, t)) * s.C + c];
    out[(px.b * s.C + c) * plane + px.yx] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kPixelThreads)
    neighbourhood_attention_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ q,
                                            const T* __restrict__ keys, const T* __restrict__ values,
                                            scalar_t* __restrict__ grad_q, T* __restrict__ grad_keys,
                                            T* __restrict__ grad_values, Sizes s, T scale) {
  extern __shared__ __align__(sizeof(double)) unsigned char shared[];
  const int64_t groups = s.average ? 1 : s.heads;
  T* sq = reinterpret_cast<T*>(shared);  // D
  T* sg = sq + s.D;                       // C: the upstream gradient at this pixel
  T* p = sg + s.C;                        // heads * kk
  T* dlogit = p + s.heads * s.kk;         // heads * kk
  T* dp = dlogit + s.heads * s.kk;        // groups * kk
  T* mean = dp + groups * s.kk;           // kk
  const Pixel px = pixel_of(s);
  const int64_t plane = s.Ho * s.Wo;
  for (int64_t d = threadIdx.x; d < s.D; d += blockDim.x) sq[d] = static_cast<T>(q[(px.b * s.D + d) * plane + px.yx]);
  for (int64_t c = threadIdx.x; c < s.C; c += blockDim.x)
    sg[c] = static_cast<T>(grad[(px.b * s.C + c) * plane + px.yx]);
  __syncthreads();
  window_softmax(s, sq, keys + px.first * s.D, scale, p);
  // dp[group, t] = grad . v(t) over the group's channels: the gradient of the group's weight of tap t
  for (int64_t e = threadIdx.x; e < groups * s.kk; e += blockDim.x) {
    const int64_t group = e / s.kk;
    const T* vt = values + (px.first + tap_offset(s, e % s.kk)) * s.C + group * s.cg;
    const T* gg = sg + group * s.cg;
    T acc = 0;
    for (int64_t c = 0; c < s.cg; ++c) acc += gg[c] * vt[c];
    dp[e] = acc;
  }
  const T* weights = group_weights(s, p, mean);  // synchronises (average_heads)
  __syncthreads();
  // softmax backward per head, one warp each: dlogit = scale * share * p * (dp - sum_t p dp)
  const T share = s.average ? T(1) / T(s.heads) : T(1);
  const int lane = threadIdx.x % 32;
  for (int64_t head = threadIdx.x / 32; head < s.heads; head += blockDim.x / 32) {
    const T* ph = p + head * s.kk;
    const T* dph = dp + (s.average ? 0 : head) * s.kk;
    T centre = 0;
    for (int64_t t = lane; t < s.kk; t += 32) centre += ph[t] * dph[t];
    centre = warp_sum(centre);
    for (int64_t t = lane; t < s.kk; t += 32) dlogit[head * s.kk + t] = scale * share * ph[t] * (dph[t] - centre);
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < s.D; d += blockDim.x) {
    const T* dl = dlogit + (d / s.dh) * s.kk;
    T acc = 0;
    for (int64_t t = 0; t < s.kk; ++t) {
      const int64_t token = px.first + tap_offset(s, t);
      acc += dl[t] * keys[token * s.D + d];
      atomicAdd(grad_keys + token * s.D + d, dl[t] * sq[d]);
    }
    grad_q[(px.b * s.D + d) * plane + px.yx] = static_cast<scalar_t>(acc);
  }
  for (int64_t c = threadIdx.x; c < s.C; c += blockDim.x) {
    const T* wg = weights + (s.average ? 0 : c / s.cg) * s.kk;
    for (int64_t t = 0; t < s.kk; ++t)
      atomicAdd(grad_values + (px.first + tap_offset(s, t)) * s.C + c, wg[t] * sg[c]);
  }
}

void check_launch(const char* op, int64_t pixels, int64_t shared_values, int64_t value_size) {
  TORCH_CHECK(pixels <= std::numeric_limits<int32_t>::max(), op, ": at most 2^31 - 1 output pixels (B Ho Wo); got ",
              pixels);
  TORCH_CHECK(shared_values * value_size <= kSharedBytes, op, ": the per-pixel scratch (", shared_values,
              " accumulators: channels and heads x kernel^2 weights) exceeds 48 KB of shared memory; use a smaller "
              "kernel or fewer channels");
}

at::Tensor neighbourhood_attention_cuda(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                        int64_t kernel, int64_t heads, bool average_heads, double scale) {
  const char* op = "wrc::neighbourhood_attention";
  check_neighbourhood_attention_args(op, q_, k_, v_, kernel, heads, average_heads);
  const c10::cuda::CUDAGuard guard(q_.device());
  const Sizes s = sizes_of(q_, k_, v_, kernel, heads, average_heads);
  auto out = at::empty({q_.size(0), s.C, s.Ho, s.Wo}, q_.options());
  if (out.numel() == 0) return out;
  const auto q = q_.contiguous(), keys = channel_last(k_), values = channel_last(v_);
  const int64_t pixels = q.size(0) * s.Ho * s.Wo, shared_values = s.D + (s.heads + 1) * s.kk;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "wrc::neighbourhood_attention_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    check_launch(op, pixels, shared_values, sizeof(T));
    neighbourhood_attention_kernel<scalar_t, T><<<static_cast<unsigned int>(pixels), kPixelThreads,
                                                  shared_values * sizeof(T), stream>>>(
        q.data_ptr<scalar_t>(), keys.data_ptr<T>(), values.data_ptr<T>(), out.data_ptr<scalar_t>(), s,
        static_cast<T>(scale));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> neighbourhood_attention_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, int64_t kernel,
    int64_t heads, bool average_heads, double scale) {
  const char* op = "wrc::_neighbourhood_attention_backward";
  check_neighbourhood_attention_args(op, q_, k_, v_, kernel, heads, average_heads);
  check_neighbourhood_attention_grad(op, grad_, q_, v_);
  const c10::cuda::CUDAGuard guard(q_.device());
  const Sizes s = sizes_of(q_, k_, v_, kernel, heads, average_heads);
  const int64_t B = q_.size(0);
  const auto acc = q_.options().dtype(at::toOpMathType(q_.scalar_type()));
  auto grad_q = at::zeros(q_.sizes(), q_.options());
  auto grad_keys = at::zeros({B, s.h, s.w, s.D}, acc), grad_values = at::zeros({B, s.h, s.w, s.C}, acc);
  const int64_t pixels = B * s.Ho * s.Wo;
  if (pixels > 0 && s.C > 0) {
    const auto grad = grad_.contiguous(), q = q_.contiguous(), keys = channel_last(k_), values = channel_last(v_);
    const int64_t groups = average_heads ? 1 : heads;
    const int64_t shared_values = s.D + s.C + (2 * s.heads + groups + 1) * s.kk;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "wrc::neighbourhood_attention_bwd", [&] {
      using T = at::opmath_type<scalar_t>;
      check_launch(op, pixels, shared_values, sizeof(T));
      neighbourhood_attention_backward_kernel<scalar_t, T><<<static_cast<unsigned int>(pixels), kPixelThreads,
                                                             shared_values * sizeof(T), stream>>>(
          grad.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), keys.data_ptr<T>(), values.data_ptr<T>(),
          grad_q.data_ptr<scalar_t>(), grad_keys.data_ptr<T>(), grad_values.data_ptr<T>(), s, static_cast<T>(scale));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_q, from_channel_last(grad_keys, k_), from_channel_last(grad_values, v_)};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CUDA, m) {
  m.impl("neighbourhood_attention", &neighbourhood_attention_cuda);
  m.impl("_neighbourhood_attention_backward", &neighbourhood_attention_backward_cuda);
}

}  // namespace wrc
