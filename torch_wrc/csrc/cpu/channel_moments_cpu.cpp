// CPU kernel of wrc::channel_moments: per-sample, per-channel mean and population variance of channels-last
// activations in one pass, accumulated in float64 (GroupNorm statistics without a centred copy of the input).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>

#include "isa.h"

namespace wrc {
namespace {

constexpr int64_t kMaxBlockPixels = 1024;  // pixels per partial sum: exact enough in float64, bounded partials
constexpr int64_t kBlockValues = 32768;

// With d = x[p, c] - shift[c]: sums[c] += d, squares[c] += d^2 over ``pixels`` rows of C values (vectorised along
// the channels). The shift is one pixel of the sample, so that E[d^2] - E[d]^2 cancels no leading digits where the
// mean is far from zero (the shifted-data variance algorithm).
// Channels first_channel .. C - 1 only (the AVX2 build's remainder); all of them by default.
template <typename scalar_t>
void accumulate_moments(const scalar_t* __restrict x, int64_t pixels, int64_t C, const double* __restrict shift,
                        double* __restrict sums, double* __restrict squares, int64_t first_channel = 0) {
  for (int64_t p = 0; p < pixels; ++p, x += C) {
    for (int64_t c = first_channel; c < C; ++c) {
      const double v = static_cast<double>(x[c]) - shift[c];
      sums[c] += v;
      squares[c] += v * v;
    }
  }
}

#if WRC_HAS_AVX2_BUILD
// The same sums for float32 with AVX2: sixteen channels at a time, their float64 sums in eight registers across
// all the rows (through memory the loop is store-bound). Each channel adds its values in the same order as
// above, so both give the same bits.
// Channels first_channel .. C - 1 only (the AVX-512 build's remainder); all of them by default.
__attribute__((target("avx2"))) void accumulate_moments_avx2(const float* __restrict x, int64_t pixels, int64_t C,
                                                             const double* __restrict shift, double* __restrict sums,
                                                             double* __restrict squares, int64_t first_channel = 0) {
  int64_t c0 = first_channel;
  for (; c0 + 16 <= C; c0 += 16) {
    const __m256d h[4] = {_mm256_loadu_pd(shift + c0), _mm256_loadu_pd(shift + c0 + 4),
                          _mm256_loadu_pd(shift + c0 + 8), _mm256_loadu_pd(shift + c0 + 12)};
    __m256d s[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    __m256d q[4] = {s[0], s[0], s[0], s[0]};
    const float* row = x + c0;
    for (int64_t p = 0; p < pixels; ++p, row += C) {
      const __m256 a = _mm256_loadu_ps(row), b = _mm256_loadu_ps(row + 8);
      const __m256d w[4] = {_mm256_cvtps_pd(_mm256_castps256_ps128(a)), _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)),
                            _mm256_cvtps_pd(_mm256_castps256_ps128(b)), _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1))};
      for (int l = 0; l < 4; ++l) {
        const __m256d v = _mm256_sub_pd(w[l], h[l]);
        s[l] = _mm256_add_pd(s[l], v);
        q[l] = _mm256_add_pd(q[l], _mm256_mul_pd(v, v));
      }
    }
    for (int l = 0; l < 4; ++l) {
      _mm256_storeu_pd(sums + c0 + 4 * l, _mm256_add_pd(_mm256_loadu_pd(sums + c0 + 4 * l), s[l]));
      _mm256_storeu_pd(squares + c0 + 4 * l, _mm256_add_pd(_mm256_loadu_pd(squares + c0 + 4 * l), q[l]));
    }
  }
  if (c0 < C) accumulate_moments(x, pixels, C, shift, sums, squares, c0);  // the last C % 16 channels
}

// The same with AVX-512 (the widest sums: thirty-two channels at a time in eight registers, half the instructions
// of the AVX2 loop). AVX-512 has FMA, so contraction is switched off here: v * v is rounded before it is added, as
// in the other builds (the same bits; test_isa_builds).
__attribute__((target("avx512f"), optimize("fp-contract=off"))) void accumulate_moments_avx512(
    const float* __restrict x, int64_t pixels, int64_t C, const double* __restrict shift, double* __restrict sums,
    double* __restrict squares) {
  int64_t c0 = 0;
  for (; c0 + 32 <= C; c0 += 32) {
    __m512d h[4], s[4], q[4];
    for (int l = 0; l < 4; ++l) {
      h[l] = _mm512_loadu_pd(shift + c0 + 8 * l);
      s[l] = q[l] = _mm512_setzero_pd();
    }
    const float* row = x + c0;
    for (int64_t p = 0; p < pixels; ++p, row += C) {
      const __m512 a = _mm512_loadu_ps(row), b = _mm512_loadu_ps(row + 16);
      const __m512d w[4] = {
          _mm512_cvtps_pd(_mm512_castps512_ps256(a)),
          _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1))),
          _mm512_cvtps_pd(_mm512_castps512_ps256(b)),
          _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b), 1)))};
      for (int l = 0; l < 4; ++l) {
        const __m512d v = _mm512_sub_pd(w[l], h[l]);
        s[l] = _mm512_add_pd(s[l], v);
        q[l] = _mm512_add_pd(q[l], _mm512_mul_pd(v, v));
      }
    }
    for (int l = 0; l < 4; ++l) {
      _mm512_storeu_pd(sums + c0 + 8 * l, _mm512_add_pd(_mm512_loadu_pd(sums + c0 + 8 * l), s[l]));
      _mm512_storeu_pd(squares + c0 + 8 * l, _mm512_add_pd(_mm512_loadu_pd(squares + c0 + 8 * l), q[l]));
    }
  }
  if (c0 < C) accumulate_moments_avx2(x, pixels, C, shift, sums, squares, c0);  // the last C % 32 channels
}
#endif

template <typename scalar_t>
void run_accumulate_moments(const scalar_t* x, int64_t pixels, int64_t C, const double* shift, double* sums,
                            double* squares) {
#if WRC_HAS_AVX2_BUILD
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (cpu_has_avx512()) return accumulate_moments_avx512(x, pixels, C, shift, sums, squares);
    if (cpu_has_avx2()) return accumulate_moments_avx2(x, pixels, C, shift, sums, squares);
  }
#endif
  accumulate_moments(x, pixels, C, shift, sums, squares);
}

// Pixels per partial sum: a block of about kBlockValues values (128 KB of float32: the sixteen-channel passes
// over it stay in L2 however wide the rows), at most kMaxBlockPixels, and small enough that every thread gets a
// block when the map is small (a 32 x 32 grid of 416 channels would otherwise be one block: one thread of two)
int64_t block_pixels(int64_t N, int64_t P, int64_t C) {
  const int64_t by_cache = std::clamp<int64_t>(kBlockValues / std::max<int64_t>(C, 1), 16, kMaxBlockPixels);
  const int64_t wanted_blocks = (2 * at::get_num_threads() + N - 1) / N;  // per sample
  return std::max<int64_t>(1, std::min(by_cache, (P + wanted_blocks - 1) / wanted_blocks));
}

std::tuple<at::Tensor, at::Tensor> channel_moments_cpu(const at::Tensor& x_) {
  TORCH_CHECK(x_.dim() == 3, "wrc::channel_moments: x must be (N, P, C) (pixels, then channels); got ", x_.sizes());
  TORCH_CHECK(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble,
              "wrc::channel_moments supports float32 and float64 tensors; got dtype ", x_.scalar_type());
  TORCH_CHECK(x_.size(1) > 0, "wrc::channel_moments: x needs at least one pixel; got ", x_.sizes());
  const auto x = x_.contiguous();
  const int64_t N = x.size(0), P = x.size(1), C = x.size(2);
  const int64_t block = block_pixels(N, P, C);
  const int64_t blocks = (P + block - 1) / block;
  auto partial = at::zeros({N, blocks, 2, C}, x.options().dtype(at::kDouble));  // sums, sums of squares
  double* pp = partial.data_ptr<double>();
  const auto shifts = x.select(1, 0).to(at::kDouble).contiguous();  // N, C: each sample's first pixel
  const double* sp = shifts.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "wrc::channel_moments_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / blocks, first = (task % blocks) * block;
        const int64_t last = std::min(P, first + block);
        double* sums = pp + task * 2 * C;
        run_accumulate_moments<scalar_t>(xp + (n * P + first) * C, last - first, C, sp + n * C, sums,
                                          sums + C);
      }
    });
  });
  // combine the blocks (in block order); var = E[d^2] - E[d]^2 of the shifted values d in float64, where
  // |E[d]| is of the order of the spread (the shift is a sample of the data): no catastrophic cancellation
  auto mean = at::empty({N, C}, partial.options()), var = at::empty({N, C}, partial.options());
  double* mp = mean.data_ptr<double>();
  double* vp = var.data_ptr<double>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0.0, square = 0.0;
      for (int64_t k = 0; k < blocks; ++k) {
        sum += pp[((n * blocks + k) * 2) * C + c];
        square += pp[((n * blocks + k) * 2 + 1) * C + c];
      }
      const double d = sum / static_cast<double>(P);
      mp[n * C + c] = sp[n * C + c] + d;
      vp[n * C + c] = std::max(square / static_cast<double>(P) - d * d, 0.0);
    }
  }
  return {mean, var};
}

// GroupNorm of x (N, P, C) as the per-sample, per-channel affine map x * scale + shift, from channel_moments in
// one call: the group statistics pool each group's channel means and variances (float64), then
//   scale = weight / sqrt(var_g + eps),   shift = bias - mean_g * scale,
// in x's dtype. (In Python these few (N, C) operations were ~90 us of dispatch per GroupNorm.) The moments' shift
// is the sample's first pixel: an outlier there leaves some cancellation, never more than unshifted sums.
std::tuple<at::Tensor, at::Tensor> group_norm_scale_shift_cpu(const at::Tensor& x, int64_t groups,
                                                              const std::optional<at::Tensor>& weight_,
                                                              const std::optional<at::Tensor>& bias_, double eps) {
  TORCH_CHECK(x.dim() == 3, "wrc::group_norm_scale_shift: x must be (N, P, C); got ", x.sizes());
  const int64_t N = x.size(0), C = x.size(2);
  TORCH_CHECK(groups >= 1 && C % groups == 0, "wrc::group_norm_scale_shift: groups must divide C = ", C, "; got ",
              groups);
  for (const auto* t : {&weight_, &bias_})
    TORCH_CHECK(!t->has_value() || ((*t)->dim() == 1 && (*t)->size(0) == C && (*t)->device() == x.device()),
                "wrc::group_norm_scale_shift: weight and bias must be (C,) = (", C, ",) on ", x.device());
  const auto [mean, var] = channel_moments_cpu(x);
  const auto weight = weight_.has_value() ? weight_->to(at::kDouble).contiguous() : at::ones({C}, mean.options());
  const auto bias = bias_.has_value() ? bias_->to(at::kDouble).contiguous() : at::zeros({C}, mean.options());
  auto scale = at::empty({N, C}, mean.options()), shift = at::empty({N, C}, mean.options());
  const double *mp = mean.data_ptr<double>(), *vp = var.data_ptr<double>();
  const double *wp = weight.data_ptr<double>(), *bp = bias.data_ptr<double>();
  double *sp = scale.data_ptr<double>(), *hp = shift.data_ptr<double>();
  const int64_t per_group = C / groups;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = n * C + g * per_group;
      double group_mean = 0.0, group_var = 0.0;
      for (int64_t c = 0; c < per_group; ++c) group_mean += mp[c0 + c];
      group_mean /= static_cast<double>(per_group);
      for (int64_t c = 0; c < per_group; ++c) {
        const double d = mp[c0 + c] - group_mean;
        group_var += vp[c0 + c] + d * d;
      }
      const double rstd = 1.0 / std::sqrt(group_var / static_cast<double>(per_group) + eps);
      for (int64_t c = 0; c < per_group; ++c) {
        const int64_t channel = g * per_group + c;
        sp[c0 + c] = rstd * wp[channel];
        hp[c0 + c] = -group_mean * rstd * wp[channel] + bp[channel];
      }
    }
  }
  return {scale.to(x.scalar_type()), shift.to(x.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) {
  m.impl("channel_moments", &channel_moments_cpu);
  m.impl("group_norm_scale_shift", &group_norm_scale_shift_cpu);
}

}  // namespace wrc
