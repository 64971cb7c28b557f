// CPU kernels of wrc::pixel_mlp and wrc::pixel_mlp_moments: y = W2 relu(W1 x + b1) + b2 at every pixel of
// channels-last x (N, P, C_in), two 1x1 convolutions with a ReLU between them, for inference.
//
// The guidance encoder's full-resolution layers are such a pair (the stem from the 3 image channels, GroupNorm
// folded in, then the first bottleneck's 1x1 reduction): through oneDNN each is a pass over a (P, 32) map, with
// 3 input channels a slow one, and GroupNorm's statistics a third. Here the hidden values of six pixels at a
// time stay in L1, y is computed in registers, and either written (pixel_mlp, optionally through a ReLU) or only
// summed into float64 moments (pixel_mlp_moments: the mean and variance of every output channel, shifted by the
// sample's first pixel as in wrc::channel_moments), so that no map of hidden values or of y exists.
//
// Each output is b2 + sum_j h_j W2[:, j] added in the order of j; the AVX-512 and AVX2 builds fuse each multiply-add
// (FMA, rounded once), the baseline build rounds the product and the sum apart: their results differ in the last
// bits, and the tests hold each build to a float64 oracle (WRC_BASELINE_ISA=1, WRC_NO_AVX512=1 pick the lower ones).
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "isa.h"
#include "wide.h"

namespace wrc {
namespace {

constexpr int64_t kBlockPixels = 256;  // pixels per task, and per partial sum of the moments

// The weights transposed and zero-padded to whole vectors: w1t (C_in, K'), b1 (K'), w2t (K', M'), b2 (M').
template <typename T>
struct Layers {
  const T* w1t;
  const T* b1;
  const T* w2t;
  const T* b2;
  int64_t cin, hidden, out;  // C_in, K', M'
  int64_t hidden_used;       // K: the products read only these (a padded lane is x * 0, NaN for an infinite x)
};

// max(v, 0) as PyTorch's ReLU: NaN stays NaN (v < 0 is false for it), -inf becomes 0, +inf stays
template <typename T>
WRC_ISA_INLINE T relu(T v) {
  return v < T(0) ? T(0) : v;
}

template <typename V>
WRC_ISA_INLINE V relu_wide(V v) {
  if constexpr (std::is_arithmetic_v<V>) {
    return relu(v);
  } else {
    const V zero = {};
    return v < zero ? zero : v;
  }
}

// Pixels per step: 6 x 2 accumulators, 2 weight vectors and a broadcast fill AVX2's 16 registers; AVX-512 has 32
template <int kBytes>
constexpr int kPixels = kBytes == 64 ? 12 : 6;

// Outputs [first, first + NV * lanes) of the kPixels pixels whose hidden values are h (kPixels, K'): y (kPixels,
// M') = b2 + sum_j h[:, j] W2[:, j], each weight vector loaded once for all the pixels
template <typename T, int kBytes, int NV>
WRC_ISA_INLINE void output_vectors(const Layers<T>& f, const T* h, T* y, int64_t first) {
  using W = wide_t<T, kBytes>;
  constexpr int64_t L = lanes<T, kBytes>();
  constexpr int kPixels = ::wrc::kPixels<kBytes>;
  W acc[kPixels][NV];
  for (int q = 0; q < NV; ++q) {
    const W bias = load<W>(f.b2 + first + q * L);
    for (int p = 0; p < kPixels; ++p) acc[p][q] = bias;
  }
  for (int64_t j = 0; j < f.hidden_used; ++j) {
    W w[NV];
    for (int q = 0; q < NV; ++q) w[q] = load<W>(f.w2t + j * f.out + first + q * L);
    for (int p = 0; p < kPixels; ++p) {
      const W s = splat<W>(h[p * f.hidden + j]);
      for (int q = 0; q < NV; ++q) acc[p][q] += s * w[q];
    }
  }
  for (int p = 0; p < kPixels; ++p) {
    for (int q = 0; q < NV; ++q) store(y + p * f.out + first + q * L, acc[p][q]);
  }
}

// y (kPixels, M') of the pixels x[0..kPixels) (C_in each); h: (kPixels, K') of scratch
template <typename T, int kBytes>
WRC_ISA_INLINE void pixel_step(const Layers<T>& f, const T* const* x, T* h, T* y) {
  using W = wide_t<T, kBytes>;
  constexpr int64_t L = lanes<T, kBytes>();
  constexpr int kPixels = ::wrc::kPixels<kBytes>;
  for (int64_t k = 0; k < f.hidden; k += L) {
    W acc[kPixels];
    const W bias = load<W>(f.b1 + k);
    for (int p = 0; p < kPixels; ++p) acc[p] = bias;
    for (int64_t i = 0; i < f.cin; ++i) {
      const W w = load<W>(f.w1t + i * f.hidden + k);
      for (int p = 0; p < kPixels; ++p) acc[p] += splat<W>(x[p][i]) * w;
    }
    for (int p = 0; p < kPixels; ++p) store(h + p * f.hidden + k, relu_wide(acc[p]));
  }
  int64_t first = 0;
  for (; first + 2 * L <= f.out; first += 2 * L) output_vectors<T, kBytes, 2>(f, h, y, first);
  if (first < f.out) output_vectors<T, kBytes, 1>(f, h, y, first);  // M' is a whole number of vectors
}

// Runs pixel_step over pixels [begin, end) of one sample and hands each pixel's y to consume(pixel, y) in order
// (the last step repeats its last pixel to fill kPixels; the repeats are not consumed)
template <typename T, int kBytes, typename Consume>
WRC_ISA_INLINE void for_pixels(const Layers<T>& f, const T* x, int64_t begin, int64_t end, Consume&& consume) {
  constexpr int kPixels = ::wrc::kPixels<kBytes>;
  std::vector<T> scratch(kPixels * (f.hidden + f.out));
  T *h = scratch.data(), *y = h + kPixels * f.hidden;
  const T* rows[kPixels];
  for (int64_t p = begin; p < end; p += kPixels) {
    const int64_t count = std::min<int64_t>(kPixels, end - p);
    for (int q = 0; q < kPixels; ++q) rows[q] = x + (p + std::min<int64_t>(q, count - 1)) * f.cin;
    pixel_step<T, kBytes>(f, rows, h, y);
    for (int64_t q = 0; q < count; ++q) consume(p + q, y + q * f.out);
  }
}

// pixel_mlp over pixels [begin, end) of one sample: out (P, M) = [relu](y)
template <typename T, bool kRelu, int kBytes>
WRC_ISA_INLINE void write_block(const Layers<T>& f, const T* x, T* out, int64_t m, int64_t begin, int64_t end) {
  for_pixels<T, kBytes>(f, x, begin, end, [&](int64_t pixel, const T* y) {
    T* row = out + pixel * m;
    for (int64_t c = 0; c < m; ++c) row[c] = kRelu ? relu(y[c]) : y[c];
  });
}

// pixel_mlp_moments over pixels [begin, end) of one sample: sums, squares (M) += d, d^2 with d = y - shift
template <typename T, int kBytes>
WRC_ISA_INLINE void moments_block(const Layers<T>& f, const T* x, const double* shift, double* sums,
                                  double* squares, int64_t m, int64_t begin, int64_t end) {
  for_pixels<T, kBytes>(f, x, begin, end, [&](int64_t, const T* y) {
    for (int64_t c = 0; c < m; ++c) {
      const double d = static_cast<double>(y[c]) - shift[c];
      sums[c] += d;
      squares[c] += d * d;
    }
  });
}

// The builds: AVX-512 (64-byte vectors), AVX2 + FMA, and the baseline (isa.h), the best the CPU has chosen per call
#if WRC_HAS_AVX2_BUILD
template <typename T, bool kRelu>
__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))) void write_block_avx512(const Layers<T>& f,
                                                                                        const T* x, T* out, int64_t m,
                                                                                        int64_t begin, int64_t end) {
  write_block<T, kRelu, 64>(f, x, out, m, begin, end);
}
template <typename T, bool kRelu>
__attribute__((target("avx2,fma"))) void write_block_fma(const Layers<T>& f, const T* x, T* out, int64_t m,
                                                         int64_t begin, int64_t end) {
  write_block<T, kRelu, 32>(f, x, out, m, begin, end);
}
template <typename T>
__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))) void moments_block_avx512(
    const Layers<T>& f, const T* x, const double* shift, double* sums, double* squares, int64_t m, int64_t begin,
    int64_t end) {
  moments_block<T, 64>(f, x, shift, sums, squares, m, begin, end);
}
template <typename T>
__attribute__((target("avx2,fma"))) void moments_block_fma(const Layers<T>& f, const T* x, const double* shift,
                                                           double* sums, double* squares, int64_t m, int64_t begin,
                                                           int64_t end) {
  moments_block<T, 32>(f, x, shift, sums, squares, m, begin, end);
}
#endif

template <typename T, bool kRelu>
void run_write_block(const Layers<T>& f, const T* x, T* out, int64_t m, int64_t begin, int64_t end) {
#if WRC_HAS_AVX2_BUILD
  if (cpu_has_avx512()) return write_block_avx512<T, kRelu>(f, x, out, m, begin, end);
  if (cpu_has_avx2_fma()) return write_block_fma<T, kRelu>(f, x, out, m, begin, end);
#endif
  write_block<T, kRelu, 32>(f, x, out, m, begin, end);
}

template <typename T>
void run_moments_block(const Layers<T>& f, const T* x, const double* shift, double* sums, double* squares, int64_t m,
                       int64_t begin, int64_t end) {
#if WRC_HAS_AVX2_BUILD
  if (cpu_has_avx512()) return moments_block_avx512<T>(f, x, shift, sums, squares, m, begin, end);
  if (cpu_has_avx2_fma()) return moments_block_fma<T>(f, x, shift, sums, squares, m, begin, end);
#endif
  moments_block<T, 32>(f, x, shift, sums, squares, m, begin, end);
}

// The checked inputs, and the weights in the kernels' layout (owned here)
struct Problem {
  at::Tensor x, w1t, b1, w2t, b2;
  int64_t n, pixels, cin, hidden, out;  // N, P, C_in, K, M (unpadded)
};

int64_t padded(int64_t size, int64_t multiple) { return (size + multiple - 1) / multiple * multiple; }

Problem prepare(const char* op, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be (N, P, C_in) (pixels, then channels); got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              " supports float32 and float64 tensors; got dtype ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be on the CPU");
  const int64_t cin = x.size(2);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == cin && w1.size(0) > 0, op, ": w1 must be (K, C_in) with C_in = ", cin,
              "; got ", w1.sizes());
  const int64_t hidden = w1.size(0);
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == hidden, op, ": b1 must be (K,) = (", hidden, ",); got ", b1.sizes());
  TORCH_CHECK(w2.dim() == 2 && w2.size(1) == hidden && w2.size(0) > 0, op, ": w2 must be (M, K) with K = ", hidden,
              "; got ", w2.sizes());
  const int64_t out = w2.size(0);
  if (b2.has_value()) {
    TORCH_CHECK(b2->dim() == 1 && b2->size(0) == out, op, ": b2 must be (M,) = (", out, ",); got ", b2->sizes());
  }
  const std::pair<const char*, const at::Tensor*> weights[] = {{"w1", &w1}, {"b1", &b1}, {"w2", &w2}};
  for (const auto& [name, t] : weights) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                "; got ", t->scalar_type());
    TORCH_CHECK(t->device().is_cpu(), op, ": ", name, " must be on the CPU");
  }
  if (b2.has_value()) {
    TORCH_CHECK(b2->scalar_type() == x.scalar_type(), op, ": b2 must have x's dtype ", x.scalar_type(), "; got ",
                b2->scalar_type());
    TORCH_CHECK(b2->device().is_cpu(), op, ": b2 must be on the CPU");
  }
  // whole vectors of every build (AVX-512's are the widest)
  const int64_t L = x.scalar_type() == at::kFloat ? lanes<float, 64>() : lanes<double, 64>();
  const int64_t hidden_p = padded(hidden, L), out_p = padded(out, L);
  Problem problem{x.contiguous(), at::zeros({cin, hidden_p}, x.options()), at::zeros({hidden_p}, x.options()),
                  at::zeros({hidden_p, out_p}, x.options()), at::zeros({out_p}, x.options()),
                  x.size(0), x.size(1), cin, hidden, out};
  problem.w1t.narrow(1, 0, hidden).copy_(w1.t());
  problem.b1.narrow(0, 0, hidden).copy_(b1);
  problem.w2t.narrow(0, 0, hidden).narrow(1, 0, out).copy_(w2.t());
  if (b2.has_value()) problem.b2.narrow(0, 0, out).copy_(*b2);
  return problem;
}

template <typename T>
Layers<T> layers(const Problem& p) {
  return {p.w1t.const_data_ptr<T>(), p.b1.const_data_ptr<T>(), p.w2t.const_data_ptr<T>(), p.b2.const_data_ptr<T>(),
          p.cin, p.w1t.size(1), p.w2t.size(1), p.hidden};
}

void write_pixels(const Problem& problem, at::Tensor& out, bool relu_out) {
  const int64_t blocks = (problem.pixels + kBlockPixels - 1) / kBlockPixels;
  AT_DISPATCH_FLOATING_TYPES(problem.x.scalar_type(), "wrc::pixel_mlp_cpu", [&] {
    const Layers<scalar_t> f = layers<scalar_t>(problem);
    const scalar_t* x = problem.x.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, problem.n * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t sample = task / blocks, first = (task % blocks) * kBlockPixels;
        const int64_t last = std::min(problem.pixels, first + kBlockPixels);
        const scalar_t* xs = x + sample * problem.pixels * problem.cin;
        scalar_t* ys = y + sample * problem.pixels * problem.out;
        if (relu_out) {
          run_write_block<scalar_t, true>(f, xs, ys, problem.out, first, last);
        } else {
          run_write_block<scalar_t, false>(f, xs, ys, problem.out, first, last);
        }
      }
    });
  });
}

at::Tensor pixel_mlp_cpu(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                         const std::optional<at::Tensor>& b2, bool relu_out) {
  const Problem problem = prepare("wrc::pixel_mlp", x, w1, b1, w2, b2);
  at::Tensor out = at::empty({problem.n, problem.pixels, problem.out}, x.options());
  write_pixels(problem, out, relu_out);
  return out;
}

void pixel_mlp_into_cpu(at::Tensor& out, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                        const at::Tensor& w2, const std::optional<at::Tensor>& b2, bool relu_out) {
  const Problem problem = prepare("wrc::pixel_mlp_into", x, w1, b1, w2, b2);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == problem.n && out.size(1) == problem.pixels &&
                  out.size(2) == problem.out && out.is_contiguous(),
              "wrc::pixel_mlp_into: out must be contiguous (N, P, M) = (", problem.n, ", ", problem.pixels, ", ",
              problem.out, "); got ", out.sizes(), out.is_contiguous() ? "" : " (not contiguous)");
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), "wrc::pixel_mlp_into: out must have x's dtype ", x.scalar_type(),
              "; got ", out.scalar_type());
  TORCH_CHECK(out.device().is_cpu(), "wrc::pixel_mlp_into: out must be on the CPU");
  // other memory, or provably disjoint parts of the same (a strided view that may interleave is refused)
  TORCH_CHECK(!out.storage().is_alias_of(x.storage()) || at::get_overlap_status(out, x) == at::MemOverlapStatus::No,
              "wrc::pixel_mlp_into: out must not share memory with x");
  write_pixels(problem, out, relu_out);
}

std::tuple<at::Tensor, at::Tensor> pixel_mlp_moments_cpu(const at::Tensor& x_, const at::Tensor& w1,
                                                         const at::Tensor& b1, const at::Tensor& w2,
                                                         const std::optional<at::Tensor>& b2) {
  const Problem problem = prepare("wrc::pixel_mlp_moments", x_, w1, b1, w2, b2);
  TORCH_CHECK(problem.pixels > 0, "wrc::pixel_mlp_moments: x has no pixels (P = 0): the moments are undefined");
  const int64_t n = problem.n, m = problem.out, blocks = (problem.pixels + kBlockPixels - 1) / kBlockPixels;
  const auto f64 = x_.options().dtype(at::kDouble);
  // per sample: the shift (its first pixel's y), then per block of pixels its partial sums, added in block order
  at::Tensor shift = at::empty({n, m}, f64), partial = at::zeros({n, blocks, 2, m}, f64);
  AT_DISPATCH_FLOATING_TYPES(problem.x.scalar_type(), "wrc::pixel_mlp_moments_cpu", [&] {
    const Layers<scalar_t> f = layers<scalar_t>(problem);
    const scalar_t* x = problem.x.const_data_ptr<scalar_t>();
    {
      at::Tensor first_pixels = at::empty({n, 1, m}, x_.options());
      scalar_t* y = first_pixels.mutable_data_ptr<scalar_t>();
      for (int64_t sample = 0; sample < n; ++sample) {
        run_write_block<scalar_t, false>(f, x + sample * problem.pixels * problem.cin, y + sample * m, m, 0, 1);
      }
      shift.copy_(first_pixels.squeeze(1));
    }
    const double* h = shift.const_data_ptr<double>();
    double* sums = partial.mutable_data_ptr<double>();
    at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t sample = task / blocks, first = (task % blocks) * kBlockPixels;
        const int64_t last = std::min(problem.pixels, first + kBlockPixels);
        double* s = sums + task * 2 * m;
        run_moments_block<scalar_t>(f, x + sample * problem.pixels * problem.cin, h + sample * m, s, s + m, m, first,
                                    last);
      }
    });
  });
  const at::Tensor totals = partial.sum(1) / static_cast<double>(problem.pixels);  // (N, 2, M), in block order
  const at::Tensor mean_shifted = totals.select(1, 0);
  const at::Tensor var = (totals.select(1, 1) - mean_shifted.square()).clamp_min(0.0);
  return {shift + mean_shifted, var};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) {
  m.impl("pixel_mlp", &pixel_mlp_cpu);
  m.impl("pixel_mlp_into", &pixel_mlp_into_cpu);
  m.impl("pixel_mlp_moments", &pixel_mlp_moments_cpu);
}

}  // namespace wrc
