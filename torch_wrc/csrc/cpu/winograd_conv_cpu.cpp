// CPU kernel of wrc::winograd_conv3x3: a 3x3 convolution (stride 1, zero padding 1, one group) of a channels-last
// map by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, 2016), for inference.
//
// Each 2x2 block of output pixels ("tile") is A^T [(G g G^T) . (B^T d B)] A for its 4x4 input patch d and each
// 3x3 kernel g: the sum over the input channels of the elementwise products becomes 16 matrix products
// (tiles x C_in) @ (C_in x C_out), 16 multiplications per tile where direct convolution takes 36 (2.25x fewer),
// done by the BLAS. PyTorch's CPU convolutions (oneDNN, direct algorithm) have no Winograd path: for the guided
// networks' wide 3x3 convolutions (208-416 channels) this is the faster algorithm. Rounding: the transforms only add, subtract
// and halve; the float32 result is within a few times direct convolution's rounding error of the exact one.
//
// The tiles are processed in blocks of a few MB (input transform, the 16 products, output transform), so that the
// transformed tiles stay in cache and no (16, tiles, C) buffer of the whole map exists.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "isa.h"
#include "wide.h"

namespace wrc {
namespace {

// u[k][co][ci] = (G g G^T)[k] for the kernels of output channels [co_begin, co_end); w channels-last (Cout, 3, 3,
// Cin). G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
template <typename T>
WRC_ISA_INLINE void transform_weights(const T* w, T* u, int64_t cout, int64_t cin, int64_t co_begin,
                                      int64_t co_end) {
  const int64_t plane = cout * cin;
  for (int64_t co = co_begin; co < co_end; ++co) {
    const T* g = w + co * 9 * cin;
    T* out = u + co * cin;
    for_lanes<T>(cin, [&]<typename V>(int64_t ci) {
      const V half = splat<V>(T(0.5));
      V t[4][3];
      for (int j = 0; j < 3; ++j) {
        const V g0 = load<V>(g + j * cin + ci), g1 = load<V>(g + (3 + j) * cin + ci);
        const V g2 = load<V>(g + (6 + j) * cin + ci);
        t[0][j] = g0;
        t[1][j] = (g0 + g1 + g2) * half;
        t[2][j] = (g0 - g1 + g2) * half;
        t[3][j] = g2;
      }
      for (int a = 0; a < 4; ++a) {
        store(out + (4 * a + 0) * plane + ci, t[a][0]);
        store(out + (4 * a + 1) * plane + ci, (t[a][0] + t[a][1] + t[a][2]) * half);
        store(out + (4 * a + 2) * plane + ci, (t[a][0] - t[a][1] + t[a][2]) * half);
        store(out + (4 * a + 3) * plane + ci, t[a][2]);
      }
    });
  }
}

struct Geometry {
  int64_t height, width, tiles_w, tiles_per_sample;
};

// v[k][t - first][ci] = (B^T d B)[k] for the tiles t in [begin, end); x channels-last (N, H, W, Cin), zero outside
// the map (``zeros``: Cin zeros). B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
template <typename T>
WRC_ISA_INLINE void transform_inputs(const T* x, const T* zeros, T* v, const Geometry& geo, int64_t cin,
                                     int64_t first, int64_t block, int64_t begin, int64_t end) {
  const int64_t plane = block * cin;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / geo.tiles_per_sample, r = t % geo.tiles_per_sample;
    const int64_t row0 = 2 * (r / geo.tiles_w) - 1, col0 = 2 * (r % geo.tiles_w) - 1;
    const T* d[4][4];
    for (int a = 0; a < 4; ++a) {
      for (int b = 0; b < 4; ++b) {
        const int64_t row = row0 + a, col = col0 + b;
        d[a][b] = (row >= 0 && row < geo.height && col >= 0 && col < geo.width)
                      ? x + ((n * geo.height + row) * geo.width + col) * cin
                      : zeros;
      }
    }
    T* out = v + (t - first) * cin;
    for_lanes<T>(cin, [&]<typename V>(int64_t ci) {
      V s[4][4];
      for (int b = 0; b < 4; ++b) {
        const V d0 = load<V>(d[0][b] + ci), d1 = load<V>(d[1][b] + ci), d2 = load<V>(d[2][b] + ci);
        const V d3 = load<V>(d[3][b] + ci);
        s[0][b] = d0 - d2;
        s[1][b] = d1 + d2;
        s[2][b] = d2 - d1;
        s[3][b] = d1 - d3;
      }
      for (int a = 0; a < 4; ++a) {
        store(out + (4 * a + 0) * plane + ci, s[a][0] - s[a][2]);
        store(out + (4 * a + 1) * plane + ci, s[a][1] + s[a][2]);
        store(out + (4 * a + 2) * plane + ci, s[a][2] - s[a][1]);
        store(out + (4 * a + 3) * plane + ci, s[a][1] - s[a][3]);
      }
    });
  }
}

// The output pixels of the tiles in [begin, end): A^T m A (+ bias) from m[k][t - first][co], into y channels-last
// (N, H, W, Cout), cropped to the map. A^T = [1 1 1 0; 0 1 -1 -1].
template <typename T>
WRC_ISA_INLINE void transform_outputs(const T* m, const T* bias, T* y, const Geometry& geo, int64_t cout,
                                      int64_t first, int64_t block, int64_t begin, int64_t end) {
  const int64_t plane = block * cout;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / geo.tiles_per_sample, r = t % geo.tiles_per_sample;
    const int64_t row0 = 2 * (r / geo.tiles_w), col0 = 2 * (r % geo.tiles_w);
    const bool last_row = row0 + 1 >= geo.height, last_col = col0 + 1 >= geo.width;  // odd sizes: half tiles
    T* pixel = y + ((n * geo.height + row0) * geo.width + col0) * cout;
    const int64_t down = geo.width * cout;
    const T* tile = m + (t - first) * cout;
    for_lanes<T>(cout, [&]<typename V>(int64_t co) {
      V s[2][4];
      for (int b = 0; b < 4; ++b) {
        const V m0 = load<V>(tile + (0 + b) * plane + co), m1 = load<V>(tile + (4 + b) * plane + co);
        const V m2 = load<V>(tile + (8 + b) * plane + co), m3 = load<V>(tile + (12 + b) * plane + co);
        s[0][b] = m0 + m1 + m2;
        s[1][b] = m1 - m2 - m3;
      }
      const V offset = bias == nullptr ? splat<V>(T(0)) : load<V>(bias + co);
      for (int a = 0; a < 2; ++a) {
        if (a == 1 && last_row) break;
        store(pixel + a * down + co, s[a][0] + s[a][1] + s[a][2] + offset);
        if (!last_col) store(pixel + a * down + cout + co, s[a][1] - s[a][2] - s[a][3] + offset);
      }
    });
  }
}

WRC_ISA_CLONES(run_transform_weights, transform_weights)
WRC_ISA_CLONES(run_transform_inputs, transform_inputs)
WRC_ISA_CLONES(run_transform_outputs, transform_outputs)

// transformed values per block and side: 8 MB of float32 (measured on a 2-core Intel Xeon, 2 MB of L2 per core:
// 4-16 MB within 10 % of each other, 8 the best; 1 MB 25 % slower; a whole 64 x 64 x 240 map at once 80 % slower)
constexpr int64_t kBlockValues = int64_t(1) << 21;

// The calling thread's buffers (slot 0: transformed inputs, 1: products, 2: transformed kernels), kept between calls and grown when a
// call needs more: a fresh allocation of this size comes from the OS each time (mmap), and faulting its pages in
// cost as much as the transforms (8 MB per buffer at most: kBlockValues).
at::Tensor& workspace(int slot, int64_t values, const at::TensorOptions& options) {
  thread_local at::Tensor buffers[3][2];  // [slot][float32, float64]
  at::Tensor& buffer = buffers[slot][options.dtype() == at::kDouble ? 1 : 0];
  if (!buffer.defined() || buffer.numel() < values) {
    c10::InferenceMode normal_tensor(false);  // made under inference mode it could not be written outside it
    buffer = at::empty({values}, options);
  }
  return buffer;
}

void check_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
              "wrc::winograd_conv3x3: weight must be (C_out, C_in, 3, 3); got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble,
              "wrc::winograd_conv3x3 supports float32 and float64 tensors; got dtype ", weight.scalar_type());
  TORCH_CHECK(weight.device().is_cpu(), "wrc::winograd_conv3x3: weight must be on the CPU");
}

// u (16, C_out, C_in) = G g G^T of every kernel, the matrices the 16 products take
void transform_weights_into(const at::Tensor& weight_, at::Tensor& u) {
  const at::Tensor weight = weight_.contiguous(at::MemoryFormat::ChannelsLast);  // (Cout, 3, 3, Cin) in memory
  const int64_t cout = weight.size(0), cin = weight.size(1);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "wrc::winograd_weights_cpu", [&] {
    const scalar_t* w_ptr = weight.const_data_ptr<scalar_t>();
    scalar_t* u_ptr = u.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, cout, 8, [&](int64_t begin, int64_t end) {
      run_transform_weights<scalar_t>(w_ptr, u_ptr, cout, cin, begin, end);
    });
  });
}

at::Tensor winograd_weights_cpu(const at::Tensor& weight) {
  check_weight(weight);
  at::Tensor u = at::empty({16, weight.size(0), weight.size(1)}, weight.options().memory_format(
                                                                       at::MemoryFormat::Contiguous));
  transform_weights_into(weight, u);
  return u;
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& x_, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias_,
                                const std::optional<at::Tensor>& transformed_) {
  TORCH_CHECK(x_.dim() == 4, "wrc::winograd_conv3x3: x must be (N, C_in, H, W); got ", x_.sizes());
  check_weight(weight);
  TORCH_CHECK(weight.size(1) == x_.size(1), "wrc::winograd_conv3x3: weight must be (C_out, C_in, 3, 3) with C_in = ",
              x_.size(1), "; got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x_.scalar_type(), "wrc::winograd_conv3x3: weight must have x's dtype ",
              x_.scalar_type(), "; got ", weight.scalar_type());
  TORCH_CHECK(x_.device().is_cpu(), "wrc::winograd_conv3x3: x must be on the CPU");
  const int64_t cout = weight.size(0), cin = x_.size(1);
  if (bias_.has_value()) {
    TORCH_CHECK(bias_->dim() == 1 && bias_->size(0) == cout, "wrc::winograd_conv3x3: bias must be (C_out,) = (",
                cout, ",); got ", bias_->sizes());
    TORCH_CHECK(bias_->scalar_type() == x_.scalar_type(), "wrc::winograd_conv3x3: bias must have x's dtype ",
                x_.scalar_type(), "; got ", bias_->scalar_type());
    TORCH_CHECK(bias_->device().is_cpu(), "wrc::winograd_conv3x3: bias must be on the CPU");
  }
  if (transformed_.has_value()) {
    TORCH_CHECK(transformed_->dim() == 3 && transformed_->size(0) == 16 && transformed_->size(1) == cout &&
                    transformed_->size(2) == cin,
                "wrc::winograd_conv3x3: transformed_weight must be winograd_weights(weight), (16, ", cout, ", ", cin,
                "); got ", transformed_->sizes());
    TORCH_CHECK(transformed_->scalar_type() == x_.scalar_type(),
                "wrc::winograd_conv3x3: transformed_weight must have x's dtype ", x_.scalar_type(), "; got ",
                transformed_->scalar_type());
    TORCH_CHECK(transformed_->device().is_cpu(), "wrc::winograd_conv3x3: transformed_weight must be on the CPU");
  }
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_.contiguous(cl);  // (N, H, W, Cin) in memory
  const at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  const int64_t n = x.size(0), height = x.size(2), width = x.size(3);
  at::Tensor y = at::empty({n, cout, height, width}, x.options().memory_format(cl));
  if (y.numel() == 0) return y;
  at::Tensor u;
  if (transformed_.has_value()) {
    u = transformed_->contiguous();
  } else {  // into the thread's buffer: an 11 MB fresh allocation for 416 channels would be paged in every call
    u = workspace(2, 16 * cout * cin, x.options()).narrow(0, 0, 16 * cout * cin).view({16, cout, cin});
    transform_weights_into(weight, u);
  }
  const at::Tensor u_t = u.transpose(1, 2);  // (16, Cin, Cout): the BLAS reads it transposed
  const Geometry geo{height, width, (width + 1) / 2, ((height + 1) / 2) * ((width + 1) / 2)};
  const int64_t tiles = n * geo.tiles_per_sample;
  // blocks of at most kBlockValues transformed values, all of about the same size
  const int64_t most = std::max<int64_t>(16, kBlockValues / (16 * std::max(cin, cout)));
  const int64_t blocks = (tiles + most - 1) / most, block = (tiles + blocks - 1) / blocks;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "wrc::winograd_conv3x3_cpu", [&] {
    at::Tensor& v = workspace(0, 16 * block * cin, x.options());
    at::Tensor& m = workspace(1, 16 * block * cout, x.options());
    const std::vector<scalar_t> zeros(cin, scalar_t(0));
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    const scalar_t* b_ptr = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y_ptr = y.mutable_data_ptr<scalar_t>();
    for (int64_t first = 0; first < tiles; first += block) {
      const int64_t count = std::min(block, tiles - first);
      at::Tensor v_block = v.narrow(0, 0, 16 * count * cin).view({16, count, cin});
      at::Tensor m_block = m.narrow(0, 0, 16 * count * cout).view({16, count, cout});
      scalar_t* v_ptr = v_block.mutable_data_ptr<scalar_t>();
      at::parallel_for(first, first + count, 4, [&](int64_t begin, int64_t end) {
        run_transform_inputs<scalar_t>(x_ptr, zeros.data(), v_ptr, geo, cin, first, count, begin, end);
      });
      at::bmm_out(m_block, v_block, u_t);
      const scalar_t* m_ptr = m_block.const_data_ptr<scalar_t>();
      at::parallel_for(first, first + count, 4, [&](int64_t begin, int64_t end) {
        run_transform_outputs<scalar_t>(m_ptr, b_ptr, y_ptr, geo, cout, first, count, begin, end);
      });
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) {
  m.impl("winograd_weights", &winograd_weights_cpu);
  m.impl("winograd_conv3x3", &winograd_conv3x3_cpu);
}

}  // namespace wrc
