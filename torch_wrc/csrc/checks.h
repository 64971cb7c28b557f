// Argument checks shared by the CPU and CUDA entry points: clear messages naming the argument.
#pragma once

#include <ATen/ATen.h>

namespace wrc {

inline void check_block_solve_args(const at::Tensor& y, const at::Tensor& z, const at::Tensor& kernel,
                                   const at::Tensor& w_low, const at::Tensor& w_high) {
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              "wrc::block_solve supports float32 and float64 tensors; got y of dtype ", y.scalar_type(),
              " (the Python wrapper upcasts half precision before calling the extension)");
  for (const auto& t : {z, kernel, w_low, w_high})
    TORCH_CHECK(t.scalar_type() == y.scalar_type(), "wrc::block_solve: every tensor must have y's dtype ",
                y.scalar_type(), "; got ", t.scalar_type());
  TORCH_CHECK(y.dim() == 4, "wrc::block_solve: y must be (B, C, h, w); got ", y.sizes());
  TORCH_CHECK(kernel.dim() == 3 && kernel.size(0) == y.size(1) && kernel.size(1) == kernel.size(2),
              "wrc::block_solve: kernel must be (C, s, s) with C = ", y.size(1), "; got ", kernel.sizes());
  const int64_t s = kernel.size(1);
  TORCH_CHECK(z.dim() == 4 && z.size(0) == y.size(0) && z.size(1) == y.size(1) && z.size(2) == y.size(2) * s &&
                  z.size(3) == y.size(3) * s,
              "wrc::block_solve: z must be (B, C, s h, s w) = (", y.size(0), ", ", y.size(1), ", ", y.size(2) * s,
              ", ", y.size(3) * s, "); got ", z.sizes());
  TORCH_CHECK(w_low.sizes() == y.sizes(), "wrc::block_solve: w_low must have y's shape ", y.sizes(), "; got ",
              w_low.sizes());
  TORCH_CHECK(w_high.sizes() == z.sizes(), "wrc::block_solve: w_high must have z's shape ", z.sizes(), "; got ",
              w_high.sizes());
  for (const auto& t : {y, z, kernel, w_low, w_high})
    TORCH_CHECK(t.device() == y.device(), "wrc::block_solve: all tensors must be on ", y.device(), "; got ",
                t.device());
}

inline void check_spectral_args(const at::Tensor& t, const at::Tensor& eig, const at::Tensor& lam,
                                const at::Tensor& alpha) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "wrc::lr_spectral_solve supports float32 and float64 tensors; got t of dtype ", t.scalar_type());
  for (const auto& x : {eig, lam, alpha})
    TORCH_CHECK(x.scalar_type() == t.scalar_type(), "wrc::lr_spectral_solve: every tensor must have t's dtype ",
                t.scalar_type(), "; got ", x.scalar_type());
  TORCH_CHECK(t.dim() == 4, "wrc::lr_spectral_solve: t must be (B, C, h, w); got ", t.sizes());
  const int64_t B = t.size(0), C = t.size(1), h = t.size(2), w = t.size(3);
  TORCH_CHECK(eig.dim() == 3 && eig.size(0) == C && eig.size(1) == h && eig.size(2) == w / 2 + 1,
              "wrc::lr_spectral_solve: eig must be (C, h, w // 2 + 1) = (", C, ", ", h, ", ", w / 2 + 1, "); got ",
              eig.sizes());
  TORCH_CHECK(lam.dim() == 2 && lam.size(0) == B && lam.size(1) == C, "wrc::lr_spectral_solve: lam must be (B, C) = (",
              B, ", ", C, "); got ", lam.sizes());
  TORCH_CHECK(alpha.sizes() == lam.sizes(), "wrc::lr_spectral_solve: alpha must be (B, C) like lam; got ",
              alpha.sizes());
  for (const auto& x : {eig, lam, alpha})
    TORCH_CHECK(x.device() == t.device(), "wrc::lr_spectral_solve: all tensors must be on ", t.device());
}

// Checks (lr, hr, kernel) of the decimation ops; hr must be (B, C, s h, s w) for lr (B, C, h, w).
inline void check_decimate_args(const char* op, const at::Tensor& lr, const at::Tensor& hr, const at::Tensor& kernel,
                                int64_t scale) {
  TORCH_CHECK(hr.scalar_type() == at::kFloat || hr.scalar_type() == at::kDouble, op,
              " supports float32 and float64 tensors; got dtype ", hr.scalar_type());
  TORCH_CHECK(kernel.scalar_type() == hr.scalar_type() && lr.scalar_type() == hr.scalar_type(), op,
              ": every tensor must have the same dtype");
  TORCH_CHECK(scale >= 1, op, ": scale must be >= 1; got ", scale);
  TORCH_CHECK(kernel.dim() == 3 && kernel.size(1) == kernel.size(2) && kernel.size(1) >= scale, op,
              ": kernel must be (C, k, k) with k >= scale = ", scale, "; got ", kernel.sizes());
  TORCH_CHECK(lr.dim() == 4 && hr.dim() == 4 && lr.size(0) == hr.size(0) && lr.size(1) == hr.size(1) &&
                  kernel.size(0) == lr.size(1) && hr.size(2) == lr.size(2) * scale && hr.size(3) == lr.size(3) * scale,
              op, ": expected LR (B, C, h, w), HR (B, C, s h, s w) and kernel (C, k, k); got ", lr.sizes(), ", ",
              hr.sizes(), ", ", kernel.sizes());
  TORCH_CHECK(kernel.size(1) - scale <= 2 * std::min(hr.size(2), hr.size(3)), op,
              ": the kernel window is wider than the padded HR grid");
  TORCH_CHECK(lr.device() == hr.device() && kernel.device() == hr.device(), op, ": all tensors must share a device");
}

// Checks of the adaptive convolution: input (B, C, H + k - 1, W + k - 1), filters (B, H, W, k, k).
inline void check_adaptive_conv_args(const char* op, const at::Tensor& input, const at::Tensor& filters) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
              " supports float32, float64, float16 and bfloat16; got input of dtype ", dtype);
  TORCH_CHECK(filters.scalar_type() == dtype, op, ": filters must have the input's dtype ", dtype, "; got ",
              filters.scalar_type());
  TORCH_CHECK(input.dim() == 4, op, ": input must be (B, C, H + k - 1, W + k - 1); got ", input.sizes());
  TORCH_CHECK(filters.dim() == 5 && filters.size(3) == filters.size(4) && filters.size(3) >= 1, op,
              ": filters must be (B, H, W, k, k); got ", filters.sizes());
  const int64_t k = filters.size(3);
  TORCH_CHECK(filters.size(0) == input.size(0) && input.size(2) == filters.size(1) + k - 1 &&
                  input.size(3) == filters.size(2) + k - 1,
              op, ": input must be (B, C, H + k - 1, W + k - 1) = (", filters.size(0), ", C, ", filters.size(1) + k - 1,
              ", ", filters.size(2) + k - 1, ") for filters ", filters.sizes(), "; got ", input.sizes());
  TORCH_CHECK(input.device() == filters.device(), op, ": input and filters must share a device");
}

// The upstream gradient of an adaptive convolution: (B, C, H, W) like its output, same dtype and device.
inline void check_adaptive_conv_grad(const char* op, const at::Tensor& grad, const at::Tensor& like, int64_t B,
                                     int64_t H, int64_t W) {
  TORCH_CHECK(grad.scalar_type() == like.scalar_type(), op, ": grad must have dtype ", like.scalar_type(), "; got ",
              grad.scalar_type());
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == B && grad.size(2) == H && grad.size(3) == W, op,
              ": grad must be (B, C, H, W) = (", B, ", C, ", H, ", ", W, "); got ", grad.sizes());
  TORCH_CHECK(grad.device() == like.device(), op, ": grad must be on ", like.device());
}

}  // namespace wrc
