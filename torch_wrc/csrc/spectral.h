// The LR-spectrum step of the closed-form reverse convolution (wrc/ops/reverse_conv.py):
//   out = irfft2( m * rfft2(t) ),   m = lam / (lam * eig + alpha)   per (batch, channel, frequency),
// with eig the (real, even) eigenvalues of A A^T on the rfft2 half spectrum. Shared CPU/CUDA helpers.
//
// Backward (G = rfft2(grad), T = rfft2(t), N = h w, and v_f = 1 on the self-conjugate columns 0 and
// w/2 (w even), 2 elsewhere, so that the half spectrum stands for the whole one):
//   grad_t = irfft2(m * G)        (the operator is symmetric)
//   P_f    = v_f Re(conj(G_f) T_f) / N
//   grad_lam = sum_f P_f alpha / d_f^2,  grad_alpha = -sum_f P_f lam / d_f^2,
//   grad_eig = -sum_b P_f lam^2 / d_f^2,  d_f = lam eig_f + alpha.
#pragma once

#include <c10/util/complex.h>

#include <cstdint>

#ifdef __CUDACC__
#define WRC_SPECTRAL_HD __host__ __device__ __forceinline__
#else
#define WRC_SPECTRAL_HD inline
#endif

namespace wrc {

// Weight of half-spectrum column `col` of a width-`w` signal in sums over the full spectrum.
WRC_SPECTRAL_HD int hermitian_weight(int64_t col, int64_t w) {
  return (col == 0 || (w % 2 == 0 && col == w / 2)) ? 1 : 2;
}

template <typename scalar_t>
WRC_SPECTRAL_HD scalar_t spectral_multiplier(scalar_t eig, scalar_t lam, scalar_t alpha) {
  return lam / (lam * eig + alpha);
}

}  // namespace wrc
