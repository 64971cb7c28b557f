// The k == s weighted reverse convolution: every token's s x s block is an independent rank-one
// problem, solved in closed form (Sherman-Morrison). Shared by the CPU and CUDA kernels.
//
//   r = y - sum_t kappa_t z_t,  q = sum_t kappa_t^2 / D_t,  g = wL / (1 + wL q)
//   x_t = z_t + (kappa_t / D_t) g r                      (D = wH on the block)
//
// Backward, with G_t = dL/dx_t and u = sum_t G_t kappa_t / D_t:
//   dL/dy = g u,  dL/dz_t = G_t - kappa_t g u,  dL/dwL = r u / (1 + wL q)^2,
//   dL/dD_t = -(kappa_t g r / D_t^2) (G_t - kappa_t g u),
//   dL/dkappa_t = g r G_t / D_t - g u z_t - 2 g^2 r u kappa_t / D_t   (summed over blocks).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define WRC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define WRC_HOST_DEVICE inline
#endif

namespace wrc {

// Offsets of tap (ty, tx) of block (i, j) in an HR plane of width W, for scale s.
WRC_HOST_DEVICE int64_t hr_index(int64_t i, int64_t j, int64_t ty, int64_t tx, int64_t s, int64_t W) {
  return (i * s + ty) * W + j * s + tx;
}

// r = y - sum_t kappa_t z_t and q = sum_t kappa_t^2 / D_t over one block; with `grad`, also
// u = sum_t G_t kappa_t / D_t (the backward's reduction), in the same pass.
template <typename scalar_t>
WRC_HOST_DEVICE void block_sums(const scalar_t* z, const scalar_t* wh, const scalar_t* kappa, const scalar_t* grad,
                                scalar_t y, int64_t i, int64_t j, int64_t s, int64_t W, scalar_t* r, scalar_t* q,
                                scalar_t* u) {
  *r = y;
  *q = 0;
  *u = 0;
  for (int64_t ty = 0; ty < s; ++ty)
    for (int64_t tx = 0; tx < s; ++tx) {
      const int64_t n = hr_index(i, j, ty, tx, s, W);
      const scalar_t k = kappa[ty * s + tx];
      *r -= k * z[n];
      *q += k * k / wh[n];
      if (grad != nullptr) *u += grad[n] * k / wh[n];
    }
}

template <typename scalar_t>
WRC_HOST_DEVICE void block_forward(const scalar_t* z, const scalar_t* wh, const scalar_t* kappa, scalar_t y,
                                   scalar_t wl, int64_t i, int64_t j, int64_t s, int64_t W, scalar_t* x) {
  scalar_t r, q, unused;
  block_sums<scalar_t>(z, wh, kappa, nullptr, y, i, j, s, W, &r, &q, &unused);
  const scalar_t g = wl / (scalar_t(1) + wl * q);
  for (int64_t ty = 0; ty < s; ++ty)
    for (int64_t tx = 0; tx < s; ++tx) {
      const int64_t n = hr_index(i, j, ty, tx, s, W);
      x[n] = z[n] + kappa[ty * s + tx] / wh[n] * g * r;
    }
}

// The block's scalars of the backward pass: returns dL/dy and dL/dwL, and r, u and g = wL / (1 + wL q), which
// every tap of the block needs (block_backward_tap).
template <typename scalar_t>
WRC_HOST_DEVICE void block_backward_scalars(const scalar_t* grad, const scalar_t* z, const scalar_t* wh,
                                            const scalar_t* kappa, scalar_t y, scalar_t wl, int64_t i, int64_t j,
                                            int64_t s, int64_t W, scalar_t* grad_y, scalar_t* grad_wl, scalar_t* g,
                                            scalar_t* r, scalar_t* u) {
  scalar_t q;
  block_sums(z, wh, kappa, grad, y, i, j, s, W, r, &q, u);
  const scalar_t denom = scalar_t(1) + wl * q;
  *g = wl / denom;
  *grad_y = *g * *u;
  *grad_wl = *r * *u / (denom * denom);
}

// One tap of the block (HR cell n, kernel tap k = kappa_t, d = wH[n]): writes dL/dz[n] and dL/dwH[n], and
// returns the tap's term of dL/dkappa_t (summed over blocks by the caller).
template <typename scalar_t>
WRC_HOST_DEVICE scalar_t block_backward_tap(scalar_t grad_n, scalar_t z_n, scalar_t d, scalar_t k, scalar_t g,
                                            scalar_t r, scalar_t u, scalar_t* grad_z_n, scalar_t* grad_wh_n) {
  const scalar_t shared = grad_n - k * g * u;
  *grad_z_n = shared;
  *grad_wh_n = -(k * g * r / (d * d)) * shared;
  return g * r * grad_n / d - g * u * z_n - scalar_t(2) * g * g * r * u * k / d;
}

// Writes dL/dz and dL/dwH for the block, returns dL/dy and dL/dwL, and accumulates dL/dkappa
// into kappa_grad (s * s values owned by the caller).
template <typename scalar_t>
WRC_HOST_DEVICE void block_backward(const scalar_t* grad, const scalar_t* z, const scalar_t* wh,
                                    const scalar_t* kappa, scalar_t y, scalar_t wl, int64_t i, int64_t j, int64_t s,
                                    int64_t W, scalar_t* grad_z, scalar_t* grad_wh, scalar_t* grad_y,
                                    scalar_t* grad_wl, scalar_t* kappa_grad) {
  scalar_t g, r, u;
  block_backward_scalars(grad, z, wh, kappa, y, wl, i, j, s, W, grad_y, grad_wl, &g, &r, &u);
  for (int64_t ty = 0; ty < s; ++ty)
    for (int64_t tx = 0; tx < s; ++tx) {
      const int64_t n = hr_index(i, j, ty, tx, s, W);
      kappa_grad[ty * s + tx] +=
          block_backward_tap(grad[n], z[n], wh[n], kappa[ty * s + tx], g, r, u, grad_z + n, grad_wh + n);
    }
}

}  // namespace wrc
