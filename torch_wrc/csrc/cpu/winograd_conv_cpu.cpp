// CPU kernel of wrc::winograd_conv3x3: a 3x3 convolution (stride 1, zero padding 1, one group) of a channels-last
// map by Winograd's minimal filtering F(m x m, 3x3) (Lavin and Gray, 2016), m = 2 or 4, for inference.
//
// Each m x m block of output pixels ("tile") is A^T [(G g G^T) . (B^T d B)] A for its (m + 2) x (m + 2) input
// patch d and each 3x3 kernel g: the sum over the input channels of the elementwise products becomes (m + 2)^2
// matrix products (tiles x C_in) @ (C_in x C_out), done by the BLAS. Multiplications per output pixel: direct
// convolution 9, F(2x2, 3x3) 4 (16 per 4 pixels), F(4x4, 3x3) 2.25 (36 per 16). PyTorch's CPU convolutions
// (oneDNN, direct algorithm) have no Winograd path: for the guided networks' wide 3x3 convolutions (208-416
// channels) this is the faster algorithm.
//
// Rounding: F(2x2)'s transforms only add, subtract and halve. F(4x4) uses the points 0, 1, -1, -1/2, 2 and infinity,
// mixing a large and a small point as Barabasz et al. (2020, "Error analysis and improving the accuracy of Winograd
// convolution") advise: measured on post-ReLU inputs, float32 error 1.3-2x direct convolution's at 96-416 channels,
// up to 3.5x at 17, where the points +-2 give 3.5-8x. The rows of B^T are scaled by powers of two to integers
// (exact: the same rounding).
//
// The tiles are processed in blocks of a few MB (input transform, the products, output transform), so that the
// transformed tiles stay in cache and no ((m + 2)^2, tiles, C) buffer of the whole map exists.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "isa.h"
#include "wide.h"

namespace wrc {
namespace {

// The three 1-D transforms of F(M, 3): kernel (G g: 3 -> M + 2 values), data (B^T d: M + 2 -> M + 2) and output
// (A^T m: M + 2 -> M). The 2-D transforms apply them along the columns, then along the rows.
template <int M>
struct Minimal;

template <>
struct Minimal<2> {
  static constexpr int kAlpha = 4;
  // G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
  template <typename V, typename T>
  static WRC_ISA_INLINE void kernel(const V* g, V* u) {
    const V half = splat<V>(T(0.5));
    u[0] = g[0];
    u[1] = (g[0] + g[1] + g[2]) * half;
    u[2] = (g[0] - g[1] + g[2]) * half;
    u[3] = g[2];
  }
  // B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
  template <typename V, typename T>
  static WRC_ISA_INLINE void data(const V* d, V* v) {
    v[0] = d[0] - d[2];
    v[1] = d[1] + d[2];
    v[2] = d[2] - d[1];
    v[3] = d[1] - d[3];
  }
  // A^T = [1 1 1 0; 0 1 -1 -1]
  template <typename V, typename T>
  static WRC_ISA_INLINE void output(const V* m, V* y) {
    y[0] = m[0] + m[1] + m[2];
    y[1] = m[1] - m[2] - m[3];
  }
};

template <>
struct Minimal<4> {
  static constexpr int kAlpha = 6;
  // G = [1/2 0 0; -1/6 -1/6 -1/6; 1/6 -1/6 1/6; -16/15 8/15 -4/15; 1/30 1/15 2/15; 0 0 1/2]
  template <typename V, typename T>
  static WRC_ISA_INLINE void kernel(const V* g, V* u) {
    const V half = splat<V>(T(0.5)), six = splat<V>(T(6)), fifteen = splat<V>(T(15)), thirty = splat<V>(T(30));
    const V g2_4 = g[2] * splat<V>(T(4));
    u[0] = g[0] * half;
    u[1] = -(g[0] + g[1] + g[2]) / six;
    u[2] = (g[0] - g[1] + g[2]) / six;
    u[3] = (g[1] * splat<V>(T(8)) - g[0] * splat<V>(T(16)) - g2_4) / fifteen;
    u[4] = (g[0] + g[1] * splat<V>(T(2)) + g2_4) / thirty;
    u[5] = g[2] * half;
  }
  // B^T = [2 3 -4 -3 2 0; 0 -2 -5 -1 2 0; 0 2 1 -5 2 0; 0 2 -1 -2 1 0; 0 -1 -2 1 2 0; 0 2 3 -4 -3 2]
  template <typename V, typename T>
  static WRC_ISA_INLINE void data(const V* d, V* v) {
    const V two = splat<V>(T(2)), three = splat<V>(T(3)), four = splat<V>(T(4)), five = splat<V>(T(5));
    v[0] = d[0] * two + d[1] * three - d[2] * four - d[3] * three + d[4] * two;
    v[1] = d[4] * two - d[1] * two - d[2] * five - d[3];
    v[2] = d[1] * two + d[2] - d[3] * five + d[4] * two;
    v[3] = d[1] * two - d[2] - d[3] * two + d[4];
    v[4] = d[3] - d[1] - d[2] * two + d[4] * two;
    v[5] = d[1] * two + d[2] * three - d[3] * four - d[4] * three + d[5] * two;
  }
  // A^T = [1 1 1 1 1 0; 0 1 -1 -1/2 2 0; 0 1 1 1/4 4 0; 0 1 -1 -1/8 8 1]
  template <typename V, typename T>
  static WRC_ISA_INLINE void output(const V* m, V* y) {
    const V plus = m[1] + m[2], minus = m[1] - m[2];
    y[0] = plus + m[3] + m[4] + m[0];
    y[1] = minus - m[3] * splat<V>(T(0.5)) + m[4] * splat<V>(T(2));
    y[2] = plus + m[3] * splat<V>(T(0.25)) + m[4] * splat<V>(T(4));
    y[3] = minus - m[3] * splat<V>(T(0.125)) + m[4] * splat<V>(T(8)) + m[5];
  }
};

template <int M>
using Tile = std::integral_constant<int, M>;

// The m x m tiles of an (N, H, W) map: ceil(H / m) x ceil(W / m) per sample, numbered sample by sample, row by row.
struct Geometry {
  int64_t height, width, m, tiles_h, tiles_w;

  Geometry(int64_t height_, int64_t width_, int64_t m_)
      : height(height_), width(width_), m(m_), tiles_h((height_ + m_ - 1) / m_), tiles_w((width_ + m_ - 1) / m_) {}

  int64_t tiles_per_sample() const { return tiles_h * tiles_w; }

  // sample, first output row and first output column of tile t
  void origin(int64_t t, int64_t& n, int64_t& row, int64_t& col) const {
    n = t / tiles_per_sample();
    const int64_t r = t % tiles_per_sample();
    row = m * (r / tiles_w);
    col = m * (r % tiles_w);
  }
};

// T p T^T for an In x In patch p: the 1-D transform ``apply`` (In values -> Out) along the columns, then along the
// first ``rows`` rows of the result; at(a, b) loads p[a][b], put(a, b, v) takes (T p T^T)[a][b]. The three 2-D
// transforms below are this with G, B^T and A^T.
template <int In, int Out, typename V, typename Apply, typename At, typename Put>
WRC_ISA_INLINE void separable(Apply&& apply, At&& at, Put&& put, int rows = Out) {
  V columns[Out][In];  // columns[a][b] = (T p)[a][b]
  for (int b = 0; b < In; ++b) {
    V column[In], transformed[Out];
    for (int a = 0; a < In; ++a) column[a] = at(a, b);
    apply(column, transformed);
    for (int a = 0; a < Out; ++a) columns[a][b] = transformed[a];
  }
  for (int a = 0; a < rows; ++a) {
    V row[Out];
    apply(columns[a], row);
    for (int b = 0; b < Out; ++b) put(a, b, row[b]);
  }
}

// u[k][co][ci] = (G g G^T)[k] for the kernels of output channels [co_begin, co_end); w channels-last (Cout, 3, 3,
// Cin).
template <typename T, int M>
WRC_ISA_INLINE void transform_weights(Tile<M>, const T* w, T* u, int64_t cout, int64_t cin, int64_t co_begin,
                                      int64_t co_end) {
  constexpr int A = Minimal<M>::kAlpha;
  const int64_t plane = cout * cin;
  for (int64_t co = co_begin; co < co_end; ++co) {
    const T* g = w + co * 9 * cin;
    T* out = u + co * cin;
    for_lanes<T>(cin, [&]<typename V>(int64_t ci) WRC_LAMBDA_INLINE {
      separable<3, A, V>(
          [](const V* in, V* transformed) WRC_LAMBDA_INLINE { Minimal<M>::template kernel<V, T>(in, transformed); },
          [&](int i, int j) WRC_LAMBDA_INLINE { return load<V>(g + (3 * i + j) * cin + ci); },
          [&](int a, int b, V value) WRC_LAMBDA_INLINE { store(out + (A * a + b) * plane + ci, value); });
    });
  }
}

// v[k][t - first][ci] = (B^T d B)[k] for the tiles t in [begin, end); x channels-last (N, H, W, Cin), zero outside
// the map (``zeros``: Cin zeros).
template <typename T, int M>
WRC_ISA_INLINE void transform_inputs(Tile<M>, const T* x, const T* zeros, T* v, const Geometry& geo, int64_t cin,
                                     int64_t first, int64_t block, int64_t begin, int64_t end) {
  constexpr int A = Minimal<M>::kAlpha;
  const int64_t plane = block * cin;
  for (int64_t t = begin; t < end; ++t) {
    int64_t n, row0, col0;
    geo.origin(t, n, row0, col0);
    const T* d[A][A];  // the patch starts one pixel above and left of the tile: the padding
    for (int a = 0; a < A; ++a) {
      for (int b = 0; b < A; ++b) {
        const int64_t row = row0 - 1 + a, col = col0 - 1 + b;
        d[a][b] = (row >= 0 && row < geo.height && col >= 0 && col < geo.width)
                      ? x + ((n * geo.height + row) * geo.width + col) * cin
                      : zeros;
      }
    }
    T* out = v + (t - first) * cin;
    for_lanes<T>(cin, [&]<typename V>(int64_t ci) WRC_LAMBDA_INLINE {
      separable<A, A, V>(
          [](const V* in, V* transformed) WRC_LAMBDA_INLINE { Minimal<M>::template data<V, T>(in, transformed); },
          [&](int a, int b) WRC_LAMBDA_INLINE { return load<V>(d[a][b] + ci); },
          [&](int a, int b, V value) WRC_LAMBDA_INLINE { store(out + (A * a + b) * plane + ci, value); });
    });
  }
}

// The output pixels of the tiles in [begin, end): A^T m A (+ bias) from m[k][t - first][co], into y channels-last
// (N, H, W, Cout), cropped to the map.
template <typename T, int M>
WRC_ISA_INLINE void transform_outputs(Tile<M>, const T* m, const T* bias, T* y, const Geometry& geo, int64_t cout,
                                      int64_t first, int64_t block, int64_t begin, int64_t end) {
  constexpr int A = Minimal<M>::kAlpha;
  const int64_t plane = block * cout;
  for (int64_t t = begin; t < end; ++t) {
    int64_t n, row0, col0;
    geo.origin(t, n, row0, col0);
    const int64_t rows = std::min<int64_t>(M, geo.height - row0), cols = std::min<int64_t>(M, geo.width - col0);
    T* pixel = y + ((n * geo.height + row0) * geo.width + col0) * cout;
    const T* tile = m + (t - first) * cout;
    for_lanes<T>(cout, [&]<typename V>(int64_t co) WRC_LAMBDA_INLINE {
      const V offset = bias == nullptr ? splat<V>(T(0)) : load<V>(bias + co);
      separable<A, M, V>(
          [](const V* in, V* transformed) WRC_LAMBDA_INLINE { Minimal<M>::template output<V, T>(in, transformed); },
          [&](int a, int b) WRC_LAMBDA_INLINE { return load<V>(tile + (A * a + b) * plane + co); },
          [&](int a, int b, V value) WRC_LAMBDA_INLINE {
            if (b < cols) store(pixel + (a * geo.width + b) * cout + co, value + offset);
          },
          static_cast<int>(rows));
    });
  }
}

WRC_ISA_CLONES(run_transform_weights, transform_weights)
WRC_ISA_CLONES(run_transform_inputs, transform_inputs)
WRC_ISA_CLONES(run_transform_outputs, transform_outputs)

// transformed values per block and side: 8 MB of float32 (measured with F(2x2) on a 2-core Intel Xeon, 2 MB of L2
// per core: 4-16 MB within 10 % of each other, 8 the best; 1 MB 25 % slower; a whole 64 x 64 x 240 map at once 80 %
// slower; with F(4x4) on a 2-core AMD EPYC, 4-32 MB within the noise)
constexpr int64_t kBlockValues = int64_t(1) << 21;

// The calling thread's buffers (slot 0: transformed inputs, 1: products, 2: transformed kernels), kept between
// calls and grown when a call needs more: a fresh allocation of this size comes from the OS each time (mmap), and
// faulting its pages in cost as much as the transforms (8 MB per buffer at most: kBlockValues).
at::Tensor& workspace(int slot, int64_t values, const at::TensorOptions& options) {
  thread_local at::Tensor buffers[3][2];  // [slot][float32, float64]
  at::Tensor& buffer = buffers[slot][options.dtype() == at::kDouble ? 1 : 0];
  if (!buffer.defined() || buffer.numel() < values) {
    c10::InferenceMode normal_tensor(false);  // made under inference mode it could not be written outside it
    buffer = at::empty({values}, options);
  }
  return buffer;
}

template <typename T, int M>
void convolve(Tile<M> tile, const at::Tensor& x, const at::Tensor& weight_, const at::Tensor& bias, at::Tensor& y) {
  constexpr int A = Minimal<M>::kAlpha;
  const at::Tensor weight = weight_.contiguous(at::MemoryFormat::ChannelsLast);  // (Cout, 3, 3, Cin) in memory
  const int64_t cout = weight.size(0), cin = x.size(1), n = x.size(0);
  const Geometry geo(x.size(2), x.size(3), M);
  // the kernels transformed on every call, into the thread's buffer (an 11-25 MB fresh allocation for 416 channels
  // would be paged in every call; a kept copy per weight could not see in-place changes through .data)
  const int64_t kernel_values = A * A * cout * cin;
  at::Tensor u = workspace(2, kernel_values, x.options()).narrow(0, 0, kernel_values).view({A * A, cout, cin});
  const T* w_ptr = weight.const_data_ptr<T>();
  T* u_ptr = u.mutable_data_ptr<T>();
  at::parallel_for(0, cout, 8, [&](int64_t begin, int64_t end) {
    run_transform_weights<T>(tile, w_ptr, u_ptr, cout, cin, begin, end);
  });
  const at::Tensor u_t = u.transpose(1, 2);  // (A^2, Cin, Cout): the BLAS reads it transposed
  const int64_t tiles = n * geo.tiles_per_sample();
  // blocks of at most kBlockValues transformed values, all of about the same size
  const int64_t most = std::max<int64_t>(16, kBlockValues / (A * A * std::max(cin, cout)));
  const int64_t blocks = (tiles + most - 1) / most, block = (tiles + blocks - 1) / blocks;
  at::Tensor& v = workspace(0, A * A * block * cin, x.options());
  at::Tensor& m = workspace(1, A * A * block * cout, x.options());
  const std::vector<T> zeros(cin, T(0));
  const T* x_ptr = x.const_data_ptr<T>();
  const T* b_ptr = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  T* y_ptr = y.mutable_data_ptr<T>();
  for (int64_t first = 0; first < tiles; first += block) {
    const int64_t count = std::min(block, tiles - first);
    at::Tensor v_block = v.narrow(0, 0, A * A * count * cin).view({A * A, count, cin});
    at::Tensor m_block = m.narrow(0, 0, A * A * count * cout).view({A * A, count, cout});
    T* v_ptr = v_block.mutable_data_ptr<T>();
    at::parallel_for(first, first + count, 4, [&](int64_t begin, int64_t end) {
      run_transform_inputs<T>(tile, x_ptr, zeros.data(), v_ptr, geo, cin, first, count, begin, end);
    });
    at::bmm_out(m_block, v_block, u_t);
    const T* m_ptr = m_block.const_data_ptr<T>();
    at::parallel_for(first, first + count, 4, [&](int64_t begin, int64_t end) {
      run_transform_outputs<T>(tile, m_ptr, b_ptr, y_ptr, geo, cout, first, count, begin, end);
    });
  }
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& x_, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias_, int64_t tile) {
  TORCH_CHECK(x_.dim() == 4, "wrc::winograd_conv3x3: x must be (N, C_in, H, W); got ", x_.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
              "wrc::winograd_conv3x3: weight must be (C_out, C_in, 3, 3); got ", weight.sizes());
  TORCH_CHECK(weight.size(1) == x_.size(1), "wrc::winograd_conv3x3: weight must be (C_out, C_in, 3, 3) with C_in = ",
              x_.size(1), "; got ", weight.sizes());
  TORCH_CHECK(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble,
              "wrc::winograd_conv3x3 supports float32 and float64 tensors; got dtype ", x_.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x_.scalar_type(), "wrc::winograd_conv3x3: weight must have x's dtype ",
              x_.scalar_type(), "; got ", weight.scalar_type());
  TORCH_CHECK(x_.device().is_cpu() && weight.device().is_cpu(),
              "wrc::winograd_conv3x3: x and weight must be on the CPU");
  TORCH_CHECK(tile == 2 || tile == 4, "wrc::winograd_conv3x3: tile must be 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)); got ",
              tile);
  const int64_t cout = weight.size(0);
  if (bias_.has_value()) {
    TORCH_CHECK(bias_->dim() == 1 && bias_->size(0) == cout, "wrc::winograd_conv3x3: bias must be (C_out,) = (",
                cout, ",); got ", bias_->sizes());
    TORCH_CHECK(bias_->scalar_type() == x_.scalar_type(), "wrc::winograd_conv3x3: bias must have x's dtype ",
                x_.scalar_type(), "; got ", bias_->scalar_type());
    TORCH_CHECK(bias_->device().is_cpu(), "wrc::winograd_conv3x3: bias must be on the CPU");
  }
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_.contiguous(cl);  // (N, H, W, Cin) in memory
  const at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  at::Tensor y = at::empty({x.size(0), cout, x.size(2), x.size(3)}, x.options().memory_format(cl));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "wrc::winograd_conv3x3_cpu", [&] {
    if (tile == 4) {
      convolve<scalar_t>(Tile<4>{}, x, weight, bias, y);
    } else {
      convolve<scalar_t>(Tile<2>{}, x, weight, bias, y);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) { m.impl("winograd_conv3x3", &winograd_conv3x3_cpu); }

}  // namespace wrc
