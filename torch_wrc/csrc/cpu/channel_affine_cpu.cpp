// CPU kernel of wrc::channel_affine_: x = [relu](x * scale + shift [+ residual * residual_scale]) in place, per
// sample and channel, on channels-last activations (N, P, C). GroupNorm's apply, its ReLU and a bottleneck's
// residual sum in one pass over memory that already exists (no output allocation, no second or third pass).
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "isa.h"

namespace wrc {
namespace {

constexpr int64_t kGrainValues = 65536;  // values per task: a few hundred KB of float32

// The branch-free inner loop of each variant (residual, scaled residual, ReLU), so that the compiler vectorises it.
template <typename scalar_t, bool kResidual, bool kResidualScale, bool kRelu>
WRC_ISA_INLINE void affine_rows(scalar_t* __restrict x, const scalar_t* __restrict residual,
                                const scalar_t* __restrict scale, const scalar_t* __restrict shift,
                                const scalar_t* __restrict residual_scale, int64_t pixels, int64_t C) {
  for (int64_t p = 0; p < pixels; ++p, x += C) {
    for (int64_t c = 0; c < C; ++c) {
      scalar_t v = x[c] * scale[c] + shift[c];
      if constexpr (kResidualScale) {
        v += residual[c] * residual_scale[c];
      } else if constexpr (kResidual) {
        v += residual[c];
      }
      if constexpr (kRelu) v = v > scalar_t(0) ? v : scalar_t(0);
      x[c] = v;
    }
    if constexpr (kResidual) residual += C;
  }
}
WRC_ISA_CLONES(run_affine_rows, affine_rows)

void check_affine(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(2), "wrc::channel_affine_: ", name,
              " must be (N, C) = (", x.size(0), ", ", x.size(2), "); got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "wrc::channel_affine_: ", name, " must have x's dtype ",
              x.scalar_type(), "; got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "wrc::channel_affine_: ", name, " must be on ", x.device());
}

void channel_affine_cpu(at::Tensor& x, const at::Tensor& scale_, const at::Tensor& shift_,
                        const std::optional<at::Tensor>& residual_, const std::optional<at::Tensor>& residual_scale_,
                        bool relu) {
  TORCH_CHECK(x.dim() == 3, "wrc::channel_affine_: x must be (N, P, C) (pixels, then channels); got ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), "wrc::channel_affine_: x must be contiguous (it is written in place)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "wrc::channel_affine_ supports float32 and float64 tensors; got dtype ", x.scalar_type());
  check_affine(scale_, "scale", x);
  check_affine(shift_, "shift", x);
  TORCH_CHECK(residual_.has_value() || !residual_scale_.has_value(),
              "wrc::channel_affine_: residual_scale needs a residual");
  at::Tensor residual, residual_scale;
  if (residual_.has_value()) {
    TORCH_CHECK(residual_->sizes() == x.sizes() && residual_->scalar_type() == x.scalar_type(),
                "wrc::channel_affine_: residual must match x (", x.sizes(), ", ", x.scalar_type(), "); got ",
                residual_->sizes(), ", ", residual_->scalar_type());
    TORCH_CHECK(at::get_overlap_status(x, *residual_) == at::MemOverlapStatus::No,
                "wrc::channel_affine_: residual must not share memory with x (x is written in place)");
    TORCH_CHECK(residual_->device() == x.device(), "wrc::channel_affine_: residual must be on ", x.device());
    residual = residual_->contiguous();
    if (residual_scale_.has_value()) {
      check_affine(*residual_scale_, "residual_scale", x);
      residual_scale = residual_scale_->contiguous();
    }
  }
  const auto scale = scale_.contiguous(), shift = shift_.contiguous();
  const int64_t N = x.size(0), P = x.size(1), C = x.size(2);
  const int64_t grain = std::max<int64_t>(1, kGrainValues / std::max<int64_t>(C, 1));  // pixels per task
  const int64_t chunks = (P + grain - 1) / grain;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "wrc::channel_affine_cpu", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* rp = residual.defined() ? residual.data_ptr<scalar_t>() : nullptr;
    const scalar_t* rsp = residual_scale.defined() ? residual_scale.data_ptr<scalar_t>() : nullptr;
    const scalar_t* sp = scale.data_ptr<scalar_t>();
    const scalar_t* bp = shift.data_ptr<scalar_t>();
    at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / chunks, first = (task % chunks) * grain;
        const int64_t last = std::min(P, first + grain);
        const scalar_t* s = sp + n * C;
        const scalar_t* b = bp + n * C;
        const scalar_t* rs = rsp == nullptr ? nullptr : rsp + n * C;
        const scalar_t* res = rp == nullptr ? nullptr : rp + (n * P + first) * C;
        scalar_t* rows = xp + (n * P + first) * C;
        const int64_t count = last - first;
        if (res == nullptr) {
          relu ? run_affine_rows<scalar_t, false, false, true>(rows, res, s, b, rs, count, C)
               : run_affine_rows<scalar_t, false, false, false>(rows, res, s, b, rs, count, C);
        } else if (rs == nullptr) {
          relu ? run_affine_rows<scalar_t, true, false, true>(rows, res, s, b, rs, count, C)
               : run_affine_rows<scalar_t, true, false, false>(rows, res, s, b, rs, count, C);
        } else {
          relu ? run_affine_rows<scalar_t, true, true, true>(rows, res, s, b, rs, count, C)
               : run_affine_rows<scalar_t, true, true, false>(rows, res, s, b, rs, count, C);
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) { m.impl("channel_affine_", &channel_affine_cpu); }

}  // namespace wrc
