// VAE backward backend parity: every CUDA op of ops/vae_backward.h against its CPU fp32
// reference (itself checked by float64 finite differences in vae_backward_test.cpp) on the
// conv forms the Wan-VAE runs (causal 3³, cached 3³, 1³, padded-front 1³, downsample 3×3 stride 2
// with ZeroPad2d(0,1,0,1), the stride-2 and the front-padded time convs, the upsample 3×3), on
// shapes large enough to split the conv into several bands of output rows and the attention into
// several query blocks, with fresh random values.
//  * Overwritten outputs (dx, dqkv) start as NaN on the GPU: an unwritten element fails.
//  * Accumulated (+=) outputs (dw, db, dgamma) start from the same random values on both sides,
//    so "+=" rather than "=" is checked.
// Bounds (relative L2 error ‖gpu − cpu‖ / ‖cpu‖): conv gradients 5e-3 (cuBLAS runs them in TF32,
// 10-bit mantissa, as the forward conv; with OSP_VAE_FP32=1 they fall to ~1e-6); everything in
// plain fp32 (norm, upsample, bias grads, attention with FP32 GEMMs) 1e-4.
// Run: ctest -L gpu -R vae_backward_parity (or build-*/ops_vae_backward_parity_gpu_test).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "osp/core/settings.h"
#include "osp/ops/conv.h"
#include "osp/ops/vae_backward.h"
#include "test_util.h"

namespace osp {
namespace {

const Device kGpu = Device::cuda(0);
uint32_t g_seed = 9876;

Tensor rnd(const Shape& s, float scale = 1.f) {
  std::mt19937 g(g_seed++);
  std::normal_distribution<float> n(0.f, scale);
  std::vector<float> v(size_t(shape_numel(s)));
  for (auto& x : v) x = n(g);
  return Tensor::from_vector(v, s);
}
Tensor poisoned(const Shape& s) {
  std::vector<float> v(size_t(shape_numel(s)), std::numeric_limits<float>::quiet_NaN());
  return Tensor::from_vector(v, s).to(kGpu);
}
double rel(const Tensor& gpu, const Tensor& cpu) { return relative_error(gpu.to(Device::cpu()), cpu); }
bool conv_tf32() { return !engine_settings().vae_fp32; }  // OSP_VAE_FP32 (core/settings.h)

#define EXPECT_REL(gpu, cpu, tol, what)                                                  \
  do {                                                                                   \
    const double e_ = rel(gpu, cpu);                                                     \
    EXPECT_FALSE(std::isnan(e_)) << (what) << ": NaN (an output element was not written)"; \
    EXPECT_LE(e_, tol) << (what) << ": relative error " << e_;                           \
  } while (0)

struct ConvCase {
  std::string name;
  Shape xs, ws;
  ops::Conv3dArgs a;
};

std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> cs;
  auto causal = ops::Conv3dArgs::same_causal(1, 1, 1);
  cs.push_back({"causal3", {5, 16, 20, 18}, {24, 16, 3, 3, 3}, causal});
  auto cached = causal;
  cached.pad_front = 0;
  cs.push_back({"causal3_cached", {6, 8, 9, 13}, {8, 8, 3, 3, 3}, cached});
  cs.push_back({"pointwise", {4, 32, 11, 12}, {16, 32, 1, 1, 1}, ops::Conv3dArgs{}});
  ops::Conv3dArgs pf;
  pf.pad_front = 2;
  cs.push_back({"pointwise_padded_front", {3, 8, 5, 6}, {12, 8, 1, 1, 1}, pf});
  ops::Conv3dArgs down;
  down.pad_bottom = down.pad_right = 1;
  down.stride_h = down.stride_w = 2;
  cs.push_back({"down2d", {3, 16, 22, 17}, {16, 16, 1, 3, 3}, down});
  ops::Conv3dArgs tdown;
  tdown.stride_t = 2;
  cs.push_back({"time_down", {9, 16, 7, 8}, {16, 16, 3, 1, 1}, tdown});
  ops::Conv3dArgs tup;
  tup.pad_front = 2;
  cs.push_back({"time_up", {4, 16, 6, 7}, {32, 16, 3, 1, 1}, tup});
  ops::Conv3dArgs up;
  up.pad_top = up.pad_bottom = up.pad_left = up.pad_right = 1;
  cs.push_back({"up_conv2d", {3, 16, 14, 12}, {8, 16, 1, 3, 3}, up});
  // K = 128·27 = 3456 and 300×120 output pixels: the CUDA backward (128 MiB column buffers)
  // splits each frame into 4 bands of 80 output rows, the CPU one (32 MiB) into 15.
  cs.push_back({"causal3_banded", {2, 128, 300, 120}, {4, 128, 3, 3, 3}, causal});
  // K = 32·27 = 864, 48×48 output pixels, 70 frames: the CUDA backward takes whole frames 16 at a
  // time (5 chunks, the last of 6), so a chunk's inputs overlap the next chunk's.
  cs.push_back({"causal3_frame_chunks", {70, 32, 48, 48}, {8, 32, 3, 3, 3}, causal});
  ops::Conv3dArgs tdown_chunks = tdown;
  tdown_chunks.pad_front = 2;  // time stride 2 over 41 output frames in one chunk (col2im, st = 2)
  cs.push_back({"time_down_frame_chunks", {81, 48, 40, 40}, {16, 48, 3, 1, 1}, tdown_chunks});
  return cs;
}

TEST(VaeBackwardParity, Conv3d) {
  OSP_REQUIRE_GPU();
  const double tol = conv_tf32() ? 5e-3 : 1e-5;
  for (const ConvCase& cs : conv_cases()) {
    const Tensor x = rnd(cs.xs), w = rnd(cs.ws, 0.2f);
    const Shape ys = ops::conv3d_out_shape(cs.xs, cs.ws, cs.a);
    const Tensor dy = rnd(ys);
    const Tensor dw0 = rnd(cs.ws), db0 = rnd({cs.ws[0]});
    Tensor dx_c = Tensor::empty(cs.xs, DType::F32), dw_c = dw0.clone(), db_c = db0.clone();
    ops::conv3d_backward(x, w, dy, cs.a, &dx_c, &dw_c, &db_c);
    Tensor dx_g = poisoned(cs.xs), dw_g = dw0.to(kGpu), db_g = db0.to(kGpu);
    ops::conv3d_backward(x.to(kGpu), w.to(kGpu), dy.to(kGpu), cs.a, &dx_g, &dw_g, &db_g);
    EXPECT_REL(dx_g, dx_c, tol, cs.name + " dx");
    // Compare the accumulated parts (dw − dw0) so the random start does not hide the error.
    auto minus = [](const Tensor& a, const Tensor& b) {
      Tensor r = a.to(Device::cpu()).clone();
      float* p = r.data<float>();
      const float* q = b.data<float>();
      for (int64_t i = 0; i < r.numel(); ++i) p[i] -= q[i];
      return r;
    };
    EXPECT_REL(minus(dw_g, dw0), minus(dw_c, dw0), tol, cs.name + " dw (+=)");
    EXPECT_REL(minus(db_g, db0), minus(db_c, db0), 1e-4, cs.name + " db (+=)");
    // Only dx; only dw (the other pointer null).
    Tensor dx2 = poisoned(cs.xs), dw2 = Tensor::zeros(cs.ws, DType::F32, kGpu);
    ops::conv3d_backward(x.to(kGpu), w.to(kGpu), dy.to(kGpu), cs.a, &dx2, nullptr, nullptr);
    ops::conv3d_backward(x.to(kGpu), w.to(kGpu), dy.to(kGpu), cs.a, nullptr, &dw2, nullptr);
    EXPECT_REL(dx2, dx_c, tol, cs.name + " dx alone");
    EXPECT_REL(dw2, minus(dw_c, dw0), tol, cs.name + " dw alone");
  }
}

TEST(VaeBackwardParity, ChannelRmsNorm) {
  OSP_REQUIRE_GPU();
  for (bool silu : {false, true})
    for (const Shape& xs : {Shape{5, 24, 7, 9}, Shape{3, 96, 33, 17}, Shape{17, 3, 64, 64}}) {
      const std::string what = std::string(silu ? "norm+silu " : "norm ") + shape_str(xs);
      const int64_t C = xs[1];
      const Tensor x = rnd(xs), g = rnd({C, 1, 1, 1}, 0.5f), dy = rnd(xs), dg0 = rnd({C, 1, 1, 1});
      Tensor dx_c = Tensor::empty(xs, DType::F32), dg_c = dg0.clone();
      ops::channel_rms_norm_backward(x, g, silu, dy, dx_c, &dg_c);
      Tensor dx_g = poisoned(xs), dg_g = dg0.to(kGpu);
      ops::channel_rms_norm_backward(x.to(kGpu), g.to(kGpu), silu, dy.to(kGpu), dx_g, &dg_g);
      EXPECT_REL(dx_g, dx_c, 1e-4, what + " dx");
      EXPECT_REL(dg_g, dg_c, 1e-4, what + " dgamma (+=)");
      Tensor dx2 = poisoned(xs);
      ops::channel_rms_norm_backward(x.to(kGpu), g.to(kGpu), silu, dy.to(kGpu), dx2, nullptr);
      EXPECT_REL(dx2, dx_c, 1e-4, what + " dx without dgamma");
    }
}

TEST(VaeBackwardParity, UpsampleNearest2x) {
  OSP_REQUIRE_GPU();
  for (const Shape& xs : {Shape{3, 5, 7, 9}, Shape{9, 32, 16, 16}}) {
    const Tensor dy = rnd({xs[0], xs[1], 2 * xs[2], 2 * xs[3]});
    Tensor dx_c = Tensor::empty(xs, DType::F32);
    ops::upsample_nearest2x_backward(dy, dx_c);
    Tensor dx_g = poisoned(xs);
    ops::upsample_nearest2x_backward(dy.to(kGpu), dx_g);
    EXPECT_REL(dx_g, dx_c, 1e-6, "upsample " + shape_str(xs));
  }
}

TEST(VaeBackwardParity, SpatialAttention) {
  OSP_REQUIRE_GPU();
  struct A {
    int64_t N, C, L;
  };
  // L = 4100: the CUDA backward splits the queries into 2 blocks (16 Mi floats of scores), the
  // CPU one into 3.
  for (const A& c : {A{3, 32, 300}, A{2, 16, 77}, A{1, 8, 4100}, A{2, 1, 5}}) {
    const std::string what = "attention N" + std::to_string(c.N) + " C" + std::to_string(c.C) +
                             " L" + std::to_string(c.L);
    const Tensor qkv = rnd({c.N, 3 * c.C, c.L}, 0.5f), dout = rnd({c.N, c.C, c.L});
    Tensor d_c = Tensor::empty({c.N, 3 * c.C, c.L}, DType::F32);
    ops::spatial_attention_backward(qkv, dout, d_c);
    Tensor d_g = poisoned({c.N, 3 * c.C, c.L});
    ops::spatial_attention_backward(qkv.to(kGpu), dout.to(kGpu), d_g);
    EXPECT_REL(d_g, d_c, 1e-4, what + " dqkv");
  }
}

TEST(VaeBackwardParity, RejectsMixedDevices) {
  OSP_REQUIRE_GPU();
  const Tensor x = rnd({2, 4, 5, 5}), w = rnd({3, 4, 3, 3, 3});
  const auto a = ops::Conv3dArgs::same_causal(1, 1, 1);
  const Tensor dy = rnd({2, 3, 5, 5});
  Tensor dx = Tensor::zeros({2, 4, 5, 5}, DType::F32, kGpu);
  EXPECT_THROW(ops::conv3d_backward(x.to(kGpu), w, dy.to(kGpu), a, &dx, nullptr, nullptr), Error);
}

}  // namespace
}  // namespace osp
