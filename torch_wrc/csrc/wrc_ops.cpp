// Operator schemas of the torch_wrc extension (namespace "wrc"), and the Python module stub that
// lets `import torch_wrc._C` load this library. Kernels live in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing torch_wrc._C runs the static TORCH_LIBRARY registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(wrc, m) {
  // k == s weighted reverse convolution: y (B,C,h,w), z (B,C,sh,sw), kernel (C,s,s), w_low like y, w_high like z.
  m.def("block_solve(Tensor y, Tensor z, Tensor kernel, Tensor w_low, Tensor w_high) -> Tensor");
  m.def(
      "_block_solve_backward(Tensor grad, Tensor y, Tensor z, Tensor kernel, Tensor w_low, Tensor w_high)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same solve for inference on channels-last y, z (-> x channels-last), w_low (B, 1 or C, h, w) and w_high
  // (B, 1 or C, sh, sw): a map of one channel is shared by all; CPU only, not differentiable.
  m.def("block_solve_channels_last(Tensor y, Tensor z, Tensor kernel, Tensor w_low, Tensor w_high) -> Tensor");
  // Closed-form LR step: irfft2(lam / (lam * eig + alpha) * rfft2(t)); t (B,C,h,w), eig (C,h,w//2+1),
  // lam and alpha (B,C).
  m.def("lr_spectral_solve(Tensor t, Tensor eig, Tensor lam, Tensor alpha) -> Tensor");
  m.def(
      "_lr_spectral_solve_backward(Tensor grad, Tensor t, Tensor eig, Tensor lam, Tensor alpha)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // The forward model A (decimate: HR (B,C,sH,sW) -> LR), its adjoint A^T (LR -> HR), and the kernel
  // gradient sum_i y[i] x[s i - o + t] they share; kernel (C,k,k) with k >= scale.
  m.def("decimate(Tensor x, Tensor kernel, int scale) -> Tensor");
  m.def("decimate_adjoint(Tensor y, Tensor kernel, int scale) -> Tensor");
  m.def("_decimate_kernel_grad(Tensor y, Tensor x, Tensor kernel, int scale) -> Tensor");
  // Adaptive (per-pixel) convolution of FeatUp's JBU: out[b,c,y,x] = sum_ij filters[b,y,x,i,j] input[b,c,y+i,x+j];
  // input (B,C,H+k-1,W+k-1) already padded, filters (B,H,W,k,k); float32, float64, float16, bfloat16.
  m.def("adaptive_conv(Tensor input, Tensor filters) -> Tensor");
  m.def("_adaptive_conv_input_grad(Tensor grad, Tensor filters) -> Tensor");
  m.def("_adaptive_conv_filter_grad(Tensor grad, Tensor input, int kernel_size) -> Tensor");
  // Cross-scale neighbourhood attention (NAF, AnyUp): output pixel (y, x) of q (B,D,Ho,Wo) attends to the
  // kernel x kernel tokens of k (B,D,h,w) / v (B,C,h,w) around its parent token, shifted inwards at the borders;
  // heads split D, and either split C (average_heads = false) or average their weights; -> (B,C,Ho,Wo).
  m.def(
      "neighbourhood_attention(Tensor q, Tensor k, Tensor v, int kernel, int heads, bool average_heads, float scale)"
      " -> Tensor");
  // Per-sample, per-channel mean and population variance (float64, (N, C) each) of x (N, P, C): GroupNorm's
  // statistics for channels-last activations in one float64 pass; CPU only, not differentiable.
  m.def("channel_moments(Tensor x) -> (Tensor, Tensor)");
  // GroupNorm of x (N, P, C) as x * scale + shift, scale and shift (N, C) in x's dtype: channel_moments and the
  // group statistics in one call; CPU only, not differentiable.
  m.def("group_norm_scale_shift(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor)");
  // In place on x (N, P, C): x = [relu](x * scale + shift [+ residual [* residual_scale]]), scale, shift and
  // residual_scale (N, C), residual (N, P, C): GroupNorm's apply with its ReLU and a residual sum in one pass;
  // CPU only, not differentiable.
  m.def(
      "channel_affine_(Tensor(a!) x, Tensor scale, Tensor shift, Tensor? residual, Tensor? residual_scale,"
      " bool relu) -> ()");
  // A 3x3 convolution (stride 1, zero padding 1, one group) of x (N, C_in, H, W) with weight (C_out, C_in, 3, 3)
  // and an optional bias (C_out,) by Winograd's F(tile x tile, 3x3), tile 2 or 4 (4 pays on larger maps only:
  // wrc.ops.winograd.winograd_tile); -> (N, C_out, H, W) channels-last. CPU inference for float32 and float64, not
  // differentiable.
  m.def("winograd_conv3x3(Tensor x, Tensor weight, Tensor? bias=None, int tile=2) -> Tensor");
  // Two 1x1 convolutions with a ReLU between them at every pixel of x (N, P, C_in): y = W2 relu(W1 x + b1) + b2,
  // w1 (K, C_in), b1 (K), w2 (M, K), b2 (M) or none; pixel_mlp -> (N, P, M) [through a ReLU],
  // pixel_mlp_into writes them into out (N, P, M); pixel_mlp_moments -> the float64 mean and population variance
  // (N, M) each of y over the pixels, y never stored. CPU inference for float32 and float64, not differentiable.
  m.def("pixel_mlp(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor? b2, bool relu) -> Tensor");
  m.def("pixel_mlp_into(Tensor(a!) out, Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor? b2, bool relu) -> ()");
  m.def("pixel_mlp_moments(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor? b2) -> (Tensor, Tensor)");
  m.def(
      "_neighbourhood_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, int kernel, int heads,"
      " bool average_heads, float scale) -> (Tensor, Tensor, Tensor)");
}
