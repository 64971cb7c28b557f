// CPU kernels of wrc::adaptive_conv and its two gradients. One task per image row (at::parallel_for);
// each task copies that row's filters tap-major into a small buffer, so every inner loop runs over
// contiguous x (vectorisable), and accumulates in float (double for double) whatever the storage type.
// No scatter crosses tasks: the input gradient is gathered row by row, so there are no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"

namespace wrc {
namespace {

// dst[t * W + x] = filters of one row at (x, t); `row` points at filters[b, y] (W * taps values).
template <typename scalar_t, typename acc_t>
void tap_major(const scalar_t* row, int64_t W, int64_t taps, acc_t* dst) {
  for (int64_t x = 0; x < W; ++x)
    for (int64_t t = 0; t < taps; ++t) dst[t * W + x] = static_cast<acc_t>(row[x * taps + t]);
}

at::Tensor adaptive_conv_cpu(const at::Tensor& input_, const at::Tensor& filters_) {
  check_adaptive_conv_args("wrc::adaptive_conv", input_, filters_);
  const auto input = input_.contiguous(), filters = filters_.contiguous();
  const int64_t B = input.size(0), C = input.size(1), Hp = input.size(2), Wp = input.size(3);
  const int64_t H = filters.size(1), W = filters.size(2), k = filters.size(3), taps = k * k;
  auto out = at::empty({B, C, H, W}, input.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "wrc::adaptive_conv_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = input.data_ptr<scalar_t>();
    const scalar_t* f = filters.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row_filters(taps * W), acc(W);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / H, y = row % H;
        tap_major(f + row * W * taps, W, taps, row_filters.data());
        for (int64_t c = 0; c < C; ++c) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t i = 0; i < k; ++i) {
            const scalar_t* src_row = in + ((b * C + c) * Hp + y + i) * Wp;
            for (int64_t j = 0; j < k; ++j) {
              const acc_t* tap = row_filters.data() + (i * k + j) * W;
              const scalar_t* src = src_row + j;
              for (int64_t x = 0; x < W; ++x) acc[x] += tap[x] * static_cast<acc_t>(src[x]);
            }
          }
          scalar_t* dst = o + ((b * C + c) * H + y) * W;
          for (int64_t x = 0; x < W; ++x) dst[x] = static_cast<scalar_t>(acc[x]);
        }
      }
    });
  });
  return out;
}

// grad_input[b,c,yy,xx] = sum_ij grad[b,c,yy-i,xx-j] filters[b,yy-i,xx-j,i,j]: one task per padded input row.
at::Tensor adaptive_conv_input_grad_cpu(const at::Tensor& grad_, const at::Tensor& filters_) {
  TORCH_CHECK(filters_.dim() == 5 && filters_.size(3) == filters_.size(4),
              "wrc::_adaptive_conv_input_grad: filters must be (B, H, W, k, k); got ", filters_.sizes());
  check_adaptive_conv_grad("wrc::_adaptive_conv_input_grad", grad_, filters_, filters_.size(0), filters_.size(1),
                           filters_.size(2));
  const auto grad = grad_.contiguous(), filters = filters_.contiguous();
  const int64_t B = grad.size(0), C = grad.size(1), H = grad.size(2), W = grad.size(3);
  const int64_t k = filters.size(3), taps = k * k, Hp = H + k - 1, Wp = W + k - 1;
  auto grad_input = at::empty({B, C, Hp, Wp}, grad.options());
  if (grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "wrc::adaptive_conv_input_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* f = filters.data_ptr<scalar_t>();
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    at::parallel_for(0, B * Hp, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> taps_of_row(taps * W), acc(Wp);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / Hp, yy = row % Hp;
        const int64_t i_first = std::max<int64_t>(0, yy - H + 1), i_last = std::min<int64_t>(k - 1, yy);
        // taps_of_row[(i * k + j) * W + x] = filters[b, yy - i, x, i, j] for the output rows touching yy
        for (int64_t i = i_first; i <= i_last; ++i) {
          const scalar_t* frow = f + ((b * H + yy - i) * W) * taps;
          for (int64_t x = 0; x < W; ++x)
            for (int64_t j = 0; j < k; ++j)
              taps_of_row[(i * k + j) * W + x] = static_cast<acc_t>(frow[x * taps + i * k + j]);
        }
        for (int64_t c = 0; c < C; ++c) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t i = i_first; i <= i_last; ++i) {
            const scalar_t* grow = g + ((b * C + c) * H + yy - i) * W;
            for (int64_t j = 0; j < k; ++j) {
              const acc_t* tap = taps_of_row.data() + (i * k + j) * W;
              acc_t* dst = acc.data() + j;
              for (int64_t x = 0; x < W; ++x) dst[x] += tap[x] * static_cast<acc_t>(grow[x]);
            }
          }
          scalar_t* out_row = gi + ((b * C + c) * Hp + yy) * Wp;
          for (int64_t x = 0; x < Wp; ++x) out_row[x] = static_cast<scalar_t>(acc[x]);
        }
      }
    });
  });
  return grad_input;
}

// grad_filters[b,y,x,i,j] = sum_c grad[b,c,y,x] input[b,c,y+i,x+j]: every tap, one task per output row.
at::Tensor adaptive_conv_filter_grad_cpu(const at::Tensor& grad_, const at::Tensor& input_, int64_t k) {
  TORCH_CHECK(k >= 1, "wrc::_adaptive_conv_filter_grad: kernel_size must be >= 1; got ", k);
  TORCH_CHECK(input_.dim() == 4, "wrc::_adaptive_conv_filter_grad: input must be (B, C, H + k - 1, W + k - 1)");
  const int64_t H = input_.size(2) - k + 1, W = input_.size(3) - k + 1;
  check_adaptive_conv_grad("wrc::_adaptive_conv_filter_grad", grad_, input_, input_.size(0), H, W);
  TORCH_CHECK(grad_.size(1) == input_.size(1), "wrc::_adaptive_conv_filter_grad: grad and input channels differ");
  const auto grad = grad_.contiguous(), input = input_.contiguous();
  const int64_t B = grad.size(0), C = grad.size(1), Hp = input.size(2), Wp = input.size(3), taps = k * k;
  auto grad_filters = at::empty({B, H, W, k, k}, grad.options());
  if (grad_filters.numel() == 0) return grad_filters;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "wrc::adaptive_conv_filter_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* in = input.data_ptr<scalar_t>();
    scalar_t* gf = grad_filters.data_ptr<scalar_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(taps * W);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / H, y = row % H;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* grow = g + ((b * C + c) * H + y) * W;
          for (int64_t i = 0; i < k; ++i) {
            const scalar_t* src_row = in + ((b * C + c) * Hp + y + i) * Wp;
            for (int64_t j = 0; j < k; ++j) {
              acc_t* a = acc.data() + (i * k + j) * W;
              const scalar_t* src = src_row + j;
              for (int64_t x = 0; x < W; ++x) a[x] += static_cast<acc_t>(grow[x]) * static_cast<acc_t>(src[x]);
            }
          }
        }
        scalar_t* dst = gf + row * W * taps;
        for (int64_t x = 0; x < W; ++x)
          for (int64_t t = 0; t < taps; ++t) dst[x * taps + t] = static_cast<scalar_t>(acc[t * W + x]);
      }
    });
  });
  return grad_filters;
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) {
  m.impl("adaptive_conv", &adaptive_conv_cpu);
  m.impl("_adaptive_conv_input_grad", &adaptive_conv_input_grad_cpu);
  m.impl("_adaptive_conv_filter_grad", &adaptive_conv_filter_grad_cpu);
}

}  // namespace wrc
