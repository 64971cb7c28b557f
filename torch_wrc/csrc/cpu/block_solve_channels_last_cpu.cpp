// CPU kernel of wrc::block_solve_channels_last: the k == s block solve of block_solve.h for inference on
// channels-last activations, with weight maps shared by all channels or one per channel.
//
// wrc::block_solve takes NCHW planes with a weight for every channel: WRC's output solve (384 channels, one map
// shared by all) would first expand both maps to every channel, and the channels-last network would transpose y
// and z and back (copies that cost more than the solve). Here each task is one row of token blocks; per block the
// loops run along the channels, contiguous in this layout, so they vectorise:
//
//   r = y - sum_t kappa_t z_t,   q = sum_t kappa_t^2 / D_t,   x_t = z_t + kappa_t / D_t * wL r / (1 + wL q)
//
// with a shared map's 1 / D_t taken once per pixel for all channels. One pass over y, z and the maps, which also
// checks the weights (wL >= 0, wH > 0, no NaN): the Python wrapper's checks would be two more passes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <type_traits>
#include <vector>

#include "isa.h"

namespace wrc {
namespace {

// One row of token blocks (token row i): y_row (w, C), z_rows and x_rows (s rows of W pixels, C each), wl_row
// (w pixels) and wh_rows (s rows of W pixels), with 1 (shared) or C values per pixel; kt and k2t the kernel and
// its square transposed to (s * s, C); r, q, inv: scratch of C, C and s * s * C values. Returns how many weights
// were out of range (a comparison with NaN is false, so NaN counts too).
template <typename T, bool kSharedLow, bool kSharedHigh>
WRC_ISA_INLINE int64_t solve_block_row(const T* __restrict y_row, const T* __restrict z_rows, const T* __restrict wl_row,
                                    const T* __restrict wh_rows, const T* __restrict kt, const T* __restrict k2t,
                                    int64_t w, int64_t s, int64_t C, int64_t W, T* __restrict x_rows,
                                    T* __restrict r, T* __restrict q, T* __restrict inv) {
  const int64_t low_step = kSharedLow ? 1 : C, high_step = kSharedHigh ? 1 : C;
  int64_t bad = 0;
  for (int64_t j = 0; j < w; ++j) {
    const T* yv = y_row + j * C;
    const T* wl = wl_row + j * low_step;
    for (int64_t c = 0; c < C; ++c) {
      r[c] = yv[c];
      q[c] = T(0);
    }
    for (int64_t t = 0; t < s * s; ++t) {
      const int64_t pixel = (t / s) * W + j * s + t % s;
      const T* zt = z_rows + pixel * C;
      const T* wh = wh_rows + pixel * high_step;
      const T* k = kt + t * C;
      const T* k2 = k2t + t * C;
      T* it = inv + t * C;
      if constexpr (kSharedHigh) {
        bad += !(wh[0] > T(0));
        const T d = T(1) / wh[0];
        for (int64_t c = 0; c < C; ++c) {
          r[c] -= k[c] * zt[c];
          q[c] += k2[c] * d;
        }
        it[0] = d;
      } else {
        for (int64_t c = 0; c < C; ++c) {
          bad += !(wh[c] > T(0));
          it[c] = T(1) / wh[c];
          r[c] -= k[c] * zt[c];
          q[c] += k2[c] * it[c];
        }
      }
    }
    if constexpr (kSharedLow) bad += !(wl[0] >= T(0));
    for (int64_t c = 0; c < C; ++c) {  // r becomes g r, g = wL / (1 + wL q)
      const T weight = kSharedLow ? wl[0] : wl[c];
      if constexpr (!kSharedLow) bad += !(weight >= T(0));
      r[c] = weight / (T(1) + weight * q[c]) * r[c];
    }
    for (int64_t t = 0; t < s * s; ++t) {
      const int64_t pixel = (t / s) * W + j * s + t % s;
      const T* zt = z_rows + pixel * C;
      const T* k = kt + t * C;
      const T* it = inv + t * C;
      T* xt = x_rows + pixel * C;
      for (int64_t c = 0; c < C; ++c) xt[c] = zt[c] + k[c] * (kSharedHigh ? it[0] : it[c]) * r[c];
    }
  }
  return bad;
}
WRC_ISA_CLONES(run_solve_block_row, solve_block_row)

bool is_channels_last(const at::Tensor& t) { return t.is_contiguous(at::MemoryFormat::ChannelsLast); }

void check_map(const at::Tensor& map, const char* name, const at::Tensor& like, const at::Tensor& y) {
  TORCH_CHECK(map.scalar_type() == y.scalar_type(), "wrc::block_solve_channels_last: ", name, " must have y's dtype ",
              y.scalar_type(), "; got ", map.scalar_type());
  TORCH_CHECK(map.dim() == 4 && map.size(0) == like.size(0) && (map.size(1) == 1 || map.size(1) == like.size(1)) &&
                  map.size(2) == like.size(2) && map.size(3) == like.size(3),
              "wrc::block_solve_channels_last: ", name, " must be (B, 1 or C, H, W) = (", like.size(0), ", 1 or ",
              like.size(1), ", ", like.size(2), ", ", like.size(3), "); got ", map.sizes());
  TORCH_CHECK(is_channels_last(map), "wrc::block_solve_channels_last: ", name,
              " must be channels-last contiguous (a one-channel map: contiguous)");
  TORCH_CHECK(map.device() == y.device(), "wrc::block_solve_channels_last: ", name, " must be on ", y.device());
}

at::Tensor block_solve_channels_last_cpu(const at::Tensor& y, const at::Tensor& z, const at::Tensor& kernel_,
                                         const at::Tensor& w_low, const at::Tensor& w_high) {
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              "wrc::block_solve_channels_last supports float32 and float64 tensors; got y of dtype ", y.scalar_type());
  TORCH_CHECK(y.dim() == 4, "wrc::block_solve_channels_last: y must be (B, C, h, w); got ", y.sizes());
  TORCH_CHECK(kernel_.dim() == 3 && kernel_.size(0) == y.size(1) && kernel_.size(1) == kernel_.size(2) &&
                  kernel_.size(1) >= 1 && kernel_.scalar_type() == y.scalar_type(),
              "wrc::block_solve_channels_last: kernel must be (C, s, s) with C = ", y.size(1), " and y's dtype; got ",
              kernel_.sizes(), " ", kernel_.scalar_type());
  TORCH_CHECK(kernel_.device() == y.device() && z.device() == y.device(),
              "wrc::block_solve_channels_last: z and kernel must be on ", y.device());
  const int64_t B = y.size(0), C = y.size(1), h = y.size(2), w = y.size(3), s = kernel_.size(1);
  TORCH_CHECK(z.dim() == 4 && z.size(0) == B && z.size(1) == C && z.size(2) == h * s && z.size(3) == w * s &&
                  z.scalar_type() == y.scalar_type(),
              "wrc::block_solve_channels_last: z must be (B, C, s h, s w) = (", B, ", ", C, ", ", h * s, ", ", w * s,
              ") of y's dtype; got ", z.sizes(), " ", z.scalar_type());
  TORCH_CHECK(is_channels_last(y) && is_channels_last(z),
              "wrc::block_solve_channels_last: y and z must be channels-last contiguous "
              "(x.contiguous(memory_format=torch.channels_last))");
  check_map(w_low, "w_low", y, y);
  check_map(w_high, "w_high", z, y);
  const int64_t H = h * s, W = w * s;
  const int64_t low_channels = w_low.size(1), high_channels = w_high.size(1);
  const auto kt = kernel_.reshape({C, s * s}).t().contiguous();  // s * s, C: taps outer, channels inner
  const auto k2t = kt.square();
  auto x = at::empty_like(z, at::MemoryFormat::ChannelsLast);
  std::atomic<int64_t> out_of_range{0};
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "wrc::block_solve_channels_last_cpu", [&] {
    const scalar_t *yp = y.data_ptr<scalar_t>(), *zp = z.data_ptr<scalar_t>();
    const scalar_t *wlp = w_low.data_ptr<scalar_t>(), *whp = w_high.data_ptr<scalar_t>();
    const scalar_t *ktp = kt.data_ptr<scalar_t>(), *k2tp = k2t.data_ptr<scalar_t>();
    scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch((2 + s * s) * C);
      scalar_t *r = scratch.data(), *q = r + C, *inv = q + C;
      int64_t bad = 0;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / h, i = row % h;
        const scalar_t* y_row = yp + (b * h + i) * w * C;
        const scalar_t* z_rows = zp + (b * H + i * s) * W * C;
        const scalar_t* wl_row = wlp + (b * h + i) * w * low_channels;
        const scalar_t* wh_rows = whp + (b * H + i * s) * W * high_channels;
        scalar_t* x_rows = xp + (b * H + i * s) * W * C;
        const bool shared_low = low_channels == 1 && C != 1, shared_high = high_channels == 1 && C != 1;
        const auto solve = [&](auto low, auto high) {  // the variant for (shared w_low, shared w_high)
          return run_solve_block_row<scalar_t, decltype(low)::value, decltype(high)::value>(
              y_row, z_rows, wl_row, wh_rows, ktp, k2tp, w, s, C, W, x_rows, r, q, inv);
        };
        using yes = std::true_type;
        using no = std::false_type;
        bad += shared_low ? (shared_high ? solve(yes{}, yes{}) : solve(yes{}, no{}))
                          : (shared_high ? solve(no{}, yes{}) : solve(no{}, no{}));
      }
      if (bad != 0) out_of_range += bad;
    });
  });
  if (out_of_range.load() != 0) {  // the slow path names the map
    TORCH_CHECK_VALUE(w_low.ge(0).all().item<bool>(),
                      "w_low must be >= 0 everywhere (data-fidelity weights); predict it with a bounded, "
                      "non-negative parameterisation such as eps + softplus");
    TORCH_CHECK_VALUE(false, "w_high must be > 0 everywhere (regularisation weights keep the system invertible); "
                             "predict it with a strictly positive parameterisation such as eps + softplus");
  }
  return x;
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) { m.impl("block_solve_channels_last", &block_solve_channels_last_cpu); }

}  // namespace wrc
