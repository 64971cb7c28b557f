// Cross-scale neighbourhood attention (wrc/ops/neighbourhood_attention.py): output pixel (y, x) of an Ho x Wo map
// attends to the kernel x kernel tokens of an h x w grid around its parent token (floor(y h / Ho), floor(x w / Wo)),
// the window shifted inwards at the borders so that it never shrinks. The window geometry, the argument checks and
// the channel-last layout of the tokens and their gradients, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>

#ifdef __CUDACC__
#define WRC_NA_HD __host__ __device__ __forceinline__
#else
#define WRC_NA_HD inline
#endif

namespace wrc {

// First token of output position i's window along one axis: parent - kernel / 2, clamped into [0, n_tokens - kernel].
WRC_NA_HD int64_t window_start(int64_t i, int64_t n_out, int64_t n_tokens, int64_t kernel) {
  const int64_t start = i * n_tokens / n_out - kernel / 2;
  return start < 0 ? 0 : (start > n_tokens - kernel ? n_tokens - kernel : start);
}

// q (B, D, Ho, Wo), k (B, D, h, w), v (B, C, h, w); heads divides D (and C unless average_heads).
inline void check_neighbourhood_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, int64_t kernel, int64_t heads,
                                               bool average_heads) {
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
              " supports float32, float64, float16 and bfloat16; got q of dtype ", dtype);
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype, op, ": k and v must have q's dtype ", dtype,
              "; got ", k.scalar_type(), " and ", v.scalar_type());
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
              ": q, k and v must be (B, D, Ho, Wo), (B, D, h, w) and (B, C, h, w) maps; got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1), op, ": k must be (B, D, h, w) with q's B = ",
              q.size(0), " and D = ", q.size(1), "; got ", k.sizes());
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(2) == k.size(2) && v.size(3) == k.size(3), op,
              ": v must be (B, C, h, w) on the keys' grid (", q.size(0), ", C, ", k.size(2), ", ", k.size(3),
              "); got ", v.sizes());
  TORCH_CHECK(kernel >= 1 && kernel % 2 == 1, op, ": kernel must be odd and >= 1; got ", kernel);
  TORCH_CHECK(k.size(2) >= kernel && k.size(3) >= kernel, op, ": a ", kernel, " x ", kernel,
              " neighbourhood needs at least ", kernel, " tokens per side; the grid is ", k.size(2), " x ", k.size(3));
  TORCH_CHECK(heads >= 1 && q.size(1) % heads == 0, op, ": heads = ", heads, " must divide the query/key channels ",
              q.size(1));
  TORCH_CHECK(average_heads || v.size(1) % heads == 0, op, ": heads = ", heads,
              " must divide the value channels ", v.size(1), " (average_heads = false)");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op, ": q, k and v must share a device");
}

// (B, n, h, w) -> (B, h, w, n) in the accumulation type, contiguous: the tokens as both kernels read them (one
// token's channels side by side) and as their key and value gradients accumulate.
inline at::Tensor channel_last(const at::Tensor& t) {
  return t.permute({0, 2, 3, 1}).to(at::toOpMathType(t.scalar_type())).contiguous();
}

// A gradient accumulated channel-last, (B, h, w, n) in the accumulation type, back to the (B, n, h, w) layout and
// dtype of the input ``like`` it belongs to.
inline at::Tensor from_channel_last(const at::Tensor& grad_cl, const at::Tensor& like) {
  auto grad = at::empty(like.sizes(), like.options());
  grad.copy_(grad_cl.permute({0, 3, 1, 2}));
  return grad;
}

// The upstream gradient: like the output (B, C, Ho, Wo), in q's dtype and on its device.
inline void check_neighbourhood_attention_grad(const char* op, const at::Tensor& grad, const at::Tensor& q,
                                               const at::Tensor& v) {
  TORCH_CHECK(grad.scalar_type() == q.scalar_type(), op, ": grad must have q's dtype ", q.scalar_type(), "; got ",
              grad.scalar_type());
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == q.size(0) && grad.size(1) == v.size(1) &&
                  grad.size(2) == q.size(2) && grad.size(3) == q.size(3),
              op, ": grad must be (B, C, Ho, Wo) = (", q.size(0), ", ", v.size(1), ", ", q.size(2), ", ", q.size(3),
              "); got ", grad.sizes());
  TORCH_CHECK(grad.device() == q.device(), op, ": grad must be on ", q.device());
}

}  // namespace wrc
