// The forward model A of the reverse convolution and its adjoint (wrc/ops/reverse_conv.py, apply_A/apply_At):
//   (A x)[i, j] = sum_{ty, tx} kernel[ty, tx] x[(s i - o + ty) mod H, (s j - o + tx) mod W],  o = (k - s) / 2,
// a depthwise correlation decimated by s on the torus. The adjoint is written as a gather (each HR cell
// collects the LR cells whose window covers it), so neither direction needs atomics.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define WRC_DECIMATE_HD __host__ __device__ __forceinline__
#else
#define WRC_DECIMATE_HD inline
#endif

namespace wrc {

// (v mod n) in [0, n) for -n <= v < 2n, the range window offsets can reach.
WRC_DECIMATE_HD int64_t wrap(int64_t v, int64_t n) { return v < 0 ? v + n : (v >= n ? v - n : v); }

template <typename scalar_t>
WRC_DECIMATE_HD scalar_t decimate_cell(const scalar_t* x, const scalar_t* kernel, int64_t i, int64_t j, int64_t s,
                                       int64_t k, int64_t offset, int64_t H, int64_t W) {
  scalar_t acc = 0;
  for (int64_t ty = 0; ty < k; ++ty) {
    const int64_t m = wrap(s * i - offset + ty, H);
    for (int64_t tx = 0; tx < k; ++tx) acc += kernel[ty * k + tx] * x[m * W + wrap(s * j - offset + tx, W)];
  }
  return acc;
}

template <typename scalar_t>
WRC_DECIMATE_HD scalar_t adjoint_cell(const scalar_t* y, const scalar_t* kernel, int64_t m, int64_t n, int64_t s,
                                      int64_t k, int64_t offset, int64_t h, int64_t w) {
  // Tap ty lands on HR row m for LR row i = (m + offset - ty) / s, so only ty = (m + offset) mod s, + s, ...
  // contribute: one division per row and column instead of one per tap.
  const int64_t ty0 = (m + offset) % s, tx0 = (n + offset) % s;
  scalar_t acc = 0;
  for (int64_t ty = ty0; ty < k; ty += s) {
    const int64_t i = wrap((m + offset - ty) / s, h);  // exact division: m + offset - ty is a multiple of s
    for (int64_t tx = tx0; tx < k; tx += s)
      acc += kernel[ty * k + tx] * y[i * w + wrap((n + offset - tx) / s, w)];
  }
  return acc;
}

// sum_{i, j} y[i, j] x[(s i - o + ty) mod H, (s j - o + tx) mod W] over one plane: the kernel gradient of A.
template <typename scalar_t>
WRC_DECIMATE_HD scalar_t kernel_grad_tap(const scalar_t* y, const scalar_t* x, int64_t ty, int64_t tx, int64_t s,
                                         int64_t offset, int64_t h, int64_t w, int64_t begin, int64_t step) {
  const int64_t H = h * s, W = w * s;
  scalar_t acc = 0;
  for (int64_t cell = begin; cell < h * w; cell += step) {
    const int64_t i = cell / w, j = cell % w;
    acc += y[cell] * x[wrap(s * i - offset + ty, H) * W + wrap(s * j - offset + tx, W)];
  }
  return acc;
}

}  // namespace wrc
