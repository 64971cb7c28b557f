// CPU kernels of wrc::neighbourhood_attention and its backward (the geometry is in ../neighbourhood_attention.h).
//
// Forward: one task per output row (at::parallel_for over B x Ho). A row's queries are transposed into a
// channel-last scratch, the tokens once into channel-last copies in the accumulation type, so every inner loop runs
// over contiguous channels. Per pixel, the heads x k^2 logits of its window live in a per-thread scratch (softmax in
// two passes over it); nothing per pixel outlives the pixel.
//
// Backward: nothing is saved but q, k and v; the weights are recomputed per pixel. dq is written per pixel; dk and dv
// are scattered into one buffer per "piece" (the output rows sharing a parent token row: one task each, a fixed
// partition whatever the thread count), covering the k token rows of the piece's window, then gathered per token
// row in a fixed order. So no atomics, results independent of the thread count, and the extra memory is
// pieces x k x w x (D + C) accumulators (about k times the token grid), independent of the output size.
// Accumulation is in float for float32, float16 and bfloat16 storage, in double for float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../neighbourhood_attention.h"

namespace wrc {
namespace {

// sum_i a[i] b[i] with eight partial sums: a fixed order (deterministic) that the compiler turns into SIMD.
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  T r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// y += a x
template <typename T>
inline void axpy(T* y, T a, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Tasks of `work` multiply-adds each per at::parallel_for chunk: small problems run on one thread (waking a thread
// team costs more than they do).
inline int64_t grain_for(int64_t work) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work)); }

// Sizes of one call, and the window start of every output row and column.
struct Geometry {
  int64_t B, D, C, Ho, Wo, h, w, kernel, kk, heads, dh, groups, cg;
  bool average;
  std::vector<int64_t> row_start, col_start;

  Geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t kernel_, int64_t heads_,
           bool average_)
      : B(q.size(0)), D(q.size(1)), C(v.size(1)), Ho(q.size(2)), Wo(q.size(3)), h(k.size(2)), w(k.size(3)),
        kernel(kernel_), kk(kernel_ * kernel_), heads(heads_), dh(q.size(1) / heads_), groups(average_ ? 1 : heads_),
        cg(average_ ? v.size(1) : v.size(1) / heads_), average(average_), row_start(Ho), col_start(Wo) {
    for (int64_t y = 0; y < Ho; ++y) row_start[y] = window_start(y, Ho, h, kernel);
    for (int64_t x = 0; x < Wo; ++x) col_start[x] = window_start(x, Wo, w, kernel);
  }
};

// p[head * kk + t] = softmax over the window's taps t of scale * q_head . k_head(t), for one pixel. `qx` is the
// pixel's D query channels, `keys` the channel-last keys at the window's first token.
template <typename T>
void window_softmax(const Geometry& g, const T* qx, const T* keys, T scale, T* p) {
  for (int64_t head = 0; head < g.heads; ++head) {
    T* ph = p + head * g.kk;
    const T* qh = qx + head * g.dh;
    for (int64_t ti = 0; ti < g.kernel; ++ti)
      for (int64_t tj = 0; tj < g.kernel; ++tj)
        ph[ti * g.kernel + tj] = scale * dot(qh, keys + (ti * g.w + tj) * g.D + head * g.dh, g.dh);
    const T top = *std::max_element(ph, ph + g.kk);
    T sum = 0;
    for (int64_t t = 0; t < g.kk; ++t) sum += (ph[t] = std::exp(ph[t] - top));
    const T inv = T(1) / sum;
    for (int64_t t = 0; t < g.kk; ++t) ph[t] *= inv;
  }
}

// The weights each value group applies: the per-head weights themselves, or (average_heads) their mean in `mean`.
template <typename T>
const T* group_weights(const Geometry& g, const T* p, T* mean) {
  if (!g.average) return p;
  std::fill(mean, mean + g.kk, T(0));
  for (int64_t head = 0; head < g.heads; ++head) axpy(mean, T(1) / T(g.heads), p + head * g.kk, g.kk);
  return mean;
}

// dst[x * n + c] = src[c * Ho * Wo + x]: one output row of a (B, n, Ho, Wo) map, channel-last, in T.
template <typename scalar_t, typename T>
void load_row(const scalar_t* src, int64_t n, int64_t plane, int64_t Wo, T* dst) {
  for (int64_t c = 0; c < n; ++c)
    for (int64_t x = 0; x < Wo; ++x) dst[x * n + c] = static_cast<T>(src[c * plane + x]);
}

template <typename scalar_t, typename T>
void store_row(const T* src, int64_t n, int64_t plane, int64_t Wo, scalar_t* dst) {
  for (int64_t c = 0; c < n; ++c)
    for (int64_t x = 0; x < Wo; ++x) dst[c * plane + x] = static_cast<scalar_t>(src[x * n + c]);
}

at::Tensor neighbourhood_attention_cpu(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                       int64_t kernel, int64_t heads, bool average_heads, double scale) {
  check_neighbourhood_attention_args("wrc::neighbourhood_attention", q_, k_, v_, kernel, heads, average_heads);
  const Geometry g(q_, k_, v_, kernel, heads, average_heads);
  auto out = at::empty({g.B, g.C, g.Ho, g.Wo}, q_.options());
  if (out.numel() == 0) return out;
  const auto q = q_.contiguous(), keys = channel_last(k_), values = channel_last(v_);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "wrc::neighbourhood_attention_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const T* kp = keys.data_ptr<T>();
    const T* vp = values.data_ptr<T>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t plane = g.Ho * g.Wo;
    at::parallel_for(0, g.B * g.Ho, grain_for(g.Wo * g.kk * (g.D + g.C)), [&](int64_t begin, int64_t end) {
      std::vector<T> q_row(g.Wo * g.D), out_row(g.Wo * g.C), p(g.heads * g.kk), mean(g.kk);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / g.Ho, y = row % g.Ho, rs = g.row_start[y];
        load_row(qp + b * g.D * plane + y * g.Wo, g.D, plane, g.Wo, q_row.data());
        std::fill(out_row.begin(), out_row.end(), T(0));
        for (int64_t x = 0; x < g.Wo; ++x) {
          const int64_t first = (b * g.h + rs) * g.w + g.col_start[x];  // the window's first token
          window_softmax(g, q_row.data() + x * g.D, kp + first * g.D, static_cast<T>(scale), p.data());
          const T* weights = group_weights(g, p.data(), mean.data());
          T* ox = out_row.data() + x * g.C;
          for (int64_t group = 0; group < g.groups; ++group)
            for (int64_t ti = 0; ti < g.kernel; ++ti)
              for (int64_t tj = 0; tj < g.kernel; ++tj)
                axpy(ox + group * g.cg, weights[group * g.kk + ti * g.kernel + tj],
                     vp + (first + ti * g.w + tj) * g.C + group * g.cg, g.cg);
        }
        store_row(out_row.data(), g.C, plane, g.Wo, op + b * g.C * plane + y * g.Wo);
      }
    });
  });
  return out;
}

// Output rows [begin, end) sharing a parent token row (so a window start); one backward task per piece and batch
// element.
struct Piece {
  int64_t begin, end;
};

std::vector<Piece> pieces_of(const Geometry& g) {
  std::vector<Piece> pieces;
  for (int64_t y = 0; y < g.Ho; ++y)
    if (y == 0 || y * g.h / g.Ho != (y - 1) * g.h / g.Ho)
      pieces.push_back({y, y + 1});
    else
      pieces.back().end = y + 1;
  return pieces;
}

// Sums the buffers (B x pieces, kernel, w, n) of the pieces into the token gradient (B, h, w, n), one token row at a
// time, pieces in order.
template <typename T>
void gather_pieces(const Geometry& g, const std::vector<Piece>& pieces, const T* partial, int64_t n, T* grad) {
  const int64_t row_size = g.w * n, per_batch = static_cast<int64_t>(pieces.size());
  at::parallel_for(0, g.B * g.h, grain_for(g.kernel * row_size), [&](int64_t begin, int64_t end) {
    for (int64_t token_row = begin; token_row < end; ++token_row) {
      const int64_t b = token_row / g.h, i = token_row % g.h;
      for (int64_t index = 0; index < per_batch; ++index) {
        const int64_t offset = i - g.row_start[pieces[index].begin];
        if (offset >= 0 && offset < g.kernel)
          axpy(grad + token_row * row_size, T(1), partial + ((b * per_batch + index) * g.kernel + offset) * row_size,
               row_size);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> neighbourhood_attention_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, int64_t kernel,
    int64_t heads, bool average_heads, double scale) {
  const char* op = "wrc::_neighbourhood_attention_backward";
  check_neighbourhood_attention_args(op, q_, k_, v_, kernel, heads, average_heads);
  check_neighbourhood_attention_grad(op, grad_, q_, v_);
  const Geometry g(q_, k_, v_, kernel, heads, average_heads);
  const auto acc = q_.options().dtype(at::toOpMathType(q_.scalar_type()));
  auto grad_q = at::zeros(q_.sizes(), q_.options());
  auto grad_k_cl = at::zeros({g.B, g.h, g.w, g.D}, acc), grad_v_cl = at::zeros({g.B, g.h, g.w, g.C}, acc);
  if (grad_q.numel() > 0 && g.C > 0) {
    const auto grad = grad_.contiguous(), q = q_.contiguous(), keys = channel_last(k_), values = channel_last(v_);
    const auto pieces = pieces_of(g);
    const int64_t per_batch = static_cast<int64_t>(pieces.size()), n_pieces = g.B * per_batch;
    auto partial_k = at::zeros({n_pieces, g.kernel, g.w, g.D}, acc);
    auto partial_v = at::zeros({n_pieces, g.kernel, g.w, g.C}, acc);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "wrc::neighbourhood_attention_bwd", [&] {
      using T = at::opmath_type<scalar_t>;
      const scalar_t* qp = q.data_ptr<scalar_t>();
      const scalar_t* gp = grad.data_ptr<scalar_t>();
      const T* kp = keys.data_ptr<T>();
      const T* vp = values.data_ptr<T>();
      scalar_t* dqp = grad_q.data_ptr<scalar_t>();
      T* pk = partial_k.data_ptr<T>();
      T* pv = partial_v.data_ptr<T>();
      const int64_t plane = g.Ho * g.Wo;
      const T s = static_cast<T>(scale), head_share = g.average ? T(1) / T(g.heads) : T(1);
      const int64_t piece_work = (g.Ho / per_batch + 1) * g.Wo * g.kk * (3 * g.D + 2 * g.C);
      at::parallel_for(0, n_pieces, grain_for(piece_work), [&](int64_t begin, int64_t end) {
        std::vector<T> q_row(g.Wo * g.D), g_row(g.Wo * g.C), dq_row(g.Wo * g.D);
        std::vector<T> p(g.heads * g.kk), mean(g.kk), dp(g.groups * g.kk), dlogit(g.heads * g.kk);
        for (int64_t index = begin; index < end; ++index) {
          const Piece& piece = pieces[index % per_batch];
          const int64_t b = index / per_batch, rs = g.row_start[piece.begin];
          T* piece_k = pk + index * g.kernel * g.w * g.D;  // the piece's window rows rs .. rs + kernel - 1
          T* piece_v = pv + index * g.kernel * g.w * g.C;
          for (int64_t y = piece.begin; y < piece.end; ++y) {
            load_row(qp + b * g.D * plane + y * g.Wo, g.D, plane, g.Wo, q_row.data());
            load_row(gp + b * g.C * plane + y * g.Wo, g.C, plane, g.Wo, g_row.data());
            std::fill(dq_row.begin(), dq_row.end(), T(0));
            for (int64_t x = 0; x < g.Wo; ++x) {
              const int64_t cs = g.col_start[x], first = (b * g.h + rs) * g.w + cs;
              const T* qx = q_row.data() + x * g.D;
              const T* gx = g_row.data() + x * g.C;
              window_softmax(g, qx, kp + first * g.D, s, p.data());
              // dp[group, t] = grad . v(t) over the group's channels: the gradient of the weight of tap t
              for (int64_t group = 0; group < g.groups; ++group)
                for (int64_t ti = 0; ti < g.kernel; ++ti)
                  for (int64_t tj = 0; tj < g.kernel; ++tj)
                    dp[group * g.kk + ti * g.kernel + tj] =
                        dot(gx + group * g.cg, vp + (first + ti * g.w + tj) * g.C + group * g.cg, g.cg);
              // softmax backward per head (an averaged head receives 1 / heads of the group's gradient), times the
              // logit scale: dlogit = scale * p * (dp - sum_t p dp)
              for (int64_t head = 0; head < g.heads; ++head) {
                const T* ph = p.data() + head * g.kk;
                const T* dph = dp.data() + (g.average ? 0 : head) * g.kk;
                const T centre = dot(ph, dph, g.kk);
                for (int64_t t = 0; t < g.kk; ++t) dlogit[head * g.kk + t] = s * head_share * ph[t] * (dph[t] - centre);
              }
              const T* weights = group_weights(g, p.data(), mean.data());
              for (int64_t ti = 0; ti < g.kernel; ++ti)
                for (int64_t tj = 0; tj < g.kernel; ++tj) {
                  const int64_t t = ti * g.kernel + tj, token = (ti * g.w + cs + tj);  // in the piece's buffer
                  const T* kt = kp + (first + ti * g.w + tj) * g.D;
                  for (int64_t head = 0; head < g.heads; ++head) {
                    const T dl = dlogit[head * g.kk + t];
                    axpy(dq_row.data() + x * g.D + head * g.dh, dl, kt + head * g.dh, g.dh);
                    axpy(piece_k + token * g.D + head * g.dh, dl, qx + head * g.dh, g.dh);
                  }
                  for (int64_t group = 0; group < g.groups; ++group)
                    axpy(piece_v + token * g.C + group * g.cg, weights[group * g.kk + t], gx + group * g.cg, g.cg);
                }
            }
            store_row(dq_row.data(), g.D, plane, g.Wo, dqp + b * g.D * plane + y * g.Wo);
          }
        }
      });
      gather_pieces(g, pieces, pk, g.D, grad_k_cl.data_ptr<T>());
      gather_pieces(g, pieces, pv, g.C, grad_v_cl.data_ptr<T>());
    });
  }
  return {grad_q, from_channel_last(grad_k_cl, k_), from_channel_last(grad_v_cl, v_)};
}

}  // namespace

TORCH_LIBRARY_IMPL(wrc, CPU, m) {
  m.impl("neighbourhood_attention", &neighbourhood_attention_cpu);
  m.impl("_neighbourhood_attention_backward", &neighbourhood_attention_backward_cpu);
}

}  // namespace wrc
