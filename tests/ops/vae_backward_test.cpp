// VAE backward ops (ops/vae_backward.h) against float64 finite differences of float64 reference
// forwards written here: for a random r, L(inputs) = Σ r·y(inputs) and the op's vector-Jacobian
// product with dy = r must equal ∂L/∂input (central differences in double).  Every reference
// forward is first checked against the fp32 forward op it mirrors (so the FD target is the op
// the VAE runs).  Also: the accumulate (+=) rules, null outputs, the norm's clamp region, and
// bad arguments.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "osp/ops/conv.h"
#include "osp/ops/t5_vae_ops.h"
#include "osp/ops/vae_backward.h"
#include "ops/fd_check.h"

using namespace osp;
using namespace osp::fd;

namespace {

constexpr double kTol = 3e-5;

// ---- float64 reference forwards ------------------------------------------------------------

// conv3d (ops/conv.h semantics) in double.  x [T, Cin, H, W], w [Cout, Cin, kt, kh, kw].
Vec conv_ref(const Vec& x, const Shape& xs, const Vec& w, const Shape& ws, const Vec& b,
             const ops::Conv3dArgs& a, Shape& ys) {
  ys = ops::conv3d_out_shape(xs, ws, a);
  const int64_t T = xs[0], Cin = xs[1], H = xs[2], W = xs[3];
  const int64_t Cout = ws[0], kt = ws[2], kh = ws[3], kw = ws[4];
  Vec y(size_t(shape_numel(ys)));
  for (int64_t to = 0; to < ys[0]; ++to)
    for (int64_t co = 0; co < Cout; ++co)
      for (int64_t oy = 0; oy < ys[2]; ++oy)
        for (int64_t ox = 0; ox < ys[3]; ++ox) {
          double s = b.empty() ? 0.0 : b[size_t(co)];
          for (int64_t ci = 0; ci < Cin; ++ci)
            for (int64_t ta = 0; ta < kt; ++ta)
              for (int64_t bb = 0; bb < kh; ++bb)
                for (int64_t c = 0; c < kw; ++c) {
                  const int64_t ti = to * a.stride_t - a.pad_front + ta;
                  const int64_t iy = oy * a.stride_h - a.pad_top + bb;
                  const int64_t ix = ox * a.stride_w - a.pad_left + c;
                  if (ti < 0 || ti >= T || iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                  s += x[size_t(((ti * Cin + ci) * H + iy) * W + ix)] *
                       w[size_t((((co * Cin + ci) * kt + ta) * kh + bb) * kw + c)];
                }
          y[size_t(((to * Cout + co) * ys[2] + oy) * ys[3] + ox)] = s;
        }
  return y;
}

Vec norm_ref(const Vec& x, const Shape& xs, const Vec& g, bool silu) {
  const int64_t N = xs[0], C = xs[1], S = shape_numel(xs) / (N * C);
  Vec y(x.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t s = 0; s < S; ++s) {
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += x[size_t((n * C + c) * S + s)] * x[size_t((n * C + c) * S + s)];
      const double inv = 1.0 / std::max(std::sqrt(ss), 1e-12);
      for (int64_t c = 0; c < C; ++c) {
        double u = x[size_t((n * C + c) * S + s)] * inv * std::sqrt(double(C)) * g[size_t(c)];
        if (silu) u = u / (1.0 + std::exp(-u));
        y[size_t((n * C + c) * S + s)] = u;
      }
    }
  return y;
}

Vec up_ref(const Vec& x, const Shape& xs) {
  const int64_t NC = xs[0] * xs[1], H = xs[2], W = xs[3];
  Vec y(size_t(NC * 4 * H * W));
  for (int64_t nc = 0; nc < NC; ++nc)
    for (int64_t yy = 0; yy < 2 * H; ++yy)
      for (int64_t xx = 0; xx < 2 * W; ++xx)
        y[size_t((nc * 2 * H + yy) * 2 * W + xx)] = x[size_t((nc * H + yy / 2) * W + xx / 2)];
  return y;
}

Vec attn_ref(const Vec& qkv, int64_t N, int64_t C, int64_t L) {
  Vec o(size_t(N * C * L), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    const double* q = qkv.data() + n * 3 * C * L;
    const double* k = q + C * L;
    const double* v = k + C * L;
    for (int64_t i = 0; i < L; ++i) {
      Vec s(static_cast<size_t>(L));
      double mx = -1e300;
      for (int64_t j = 0; j < L; ++j) {
        double acc = 0;
        for (int64_t c = 0; c < C; ++c) acc += q[c * L + i] * k[c * L + j];
        s[size_t(j)] = acc / std::sqrt(double(C));
        mx = std::max(mx, s[size_t(j)]);
      }
      double sum = 0;
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < L; ++j) acc += s[size_t(j)] / sum * v[c * L + j];
        o[size_t((n * C + c) * L + i)] = acc;
      }
    }
  }
  return o;
}

struct ConvCase {
  const char* name;
  Shape xs, ws;
  ops::Conv3dArgs a;
};

std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> cs;
  // Causal 3×3×3 conv (residual blocks, conv_in, head): 2 zero frames in front, pad 1.
  cs.push_back({"causal3", {4, 3, 5, 4}, {2, 3, 3, 3, 3}, ops::Conv3dArgs::same_causal(1, 1, 1)});
  // The same conv on a cache-concatenated chunk (front pad shrunk to 0).
  {
    ops::Conv3dArgs a = ops::Conv3dArgs::same_causal(1, 1, 1);
    a.pad_front = 0;
    cs.push_back({"causal3_cached", {4, 2, 3, 5}, {3, 2, 3, 3, 3}, a});
  }
  // 1×1×1 shortcut / conv1 / conv2 / to_qkv / proj (the pointwise GEMM path).
  cs.push_back({"pointwise", {3, 4, 3, 5}, {5, 4, 1, 1, 1}, ops::Conv3dArgs{}});
  // Pointwise kernel with a causal pad (general path through the front pad).
  {
    ops::Conv3dArgs a;
    a.pad_front = 1;
    cs.push_back({"pointwise_padded_front", {3, 2, 2, 3}, {3, 2, 1, 1, 1}, a});
  }
  // Downsample: ZeroPad2d(0,1,0,1) + 3×3 stride 2 (a kt = 1 conv).
  {
    ops::Conv3dArgs a;
    a.pad_bottom = a.pad_right = 1;
    a.stride_h = a.stride_w = 2;
    cs.push_back({"down2d", {2, 3, 6, 4}, {3, 3, 1, 3, 3}, a});
  }
  // downsample3d time conv (3,1,1), stride 2, no padding.
  {
    ops::Conv3dArgs a;
    a.stride_t = 2;
    cs.push_back({"time_down", {5, 3, 2, 3}, {3, 3, 3, 1, 1}, a});
  }
  // upsample3d time conv (3,1,1), 2 zero frames in front.
  {
    ops::Conv3dArgs a;
    a.pad_front = 2;
    cs.push_back({"time_up", {3, 2, 2, 2}, {4, 2, 3, 1, 1}, a});
  }
  // Upsample spatial conv 3×3 pad 1 (kt = 1).
  {
    ops::Conv3dArgs a;
    a.pad_top = a.pad_bottom = a.pad_left = a.pad_right = 1;
    cs.push_back({"up_conv2d", {2, 4, 4, 3}, {2, 4, 1, 3, 3}, a});
  }
  return cs;
}

}  // namespace

TEST(VaeBackward, Conv3dMatchesFiniteDifferences) {
  uint32_t seed = 10;
  for (const ConvCase& cs : conv_cases()) {
    const std::string what = cs.name;
    Tensor x = randn(cs.xs, seed++), w = randn(cs.ws, seed++, 0.5f), b = randn({cs.ws[0]}, seed++);
    Shape ys;
    const Vec xv = values(x), wv = values(w), bv = values(b);
    const Vec yref = conv_ref(xv, cs.xs, wv, cs.ws, bv, cs.a, ys);
    // The reference is the op.
    Tensor y = ops::conv3d(x, w, &b, cs.a);
    ASSERT_EQ(y.shape(), ys) << what;
    expect_near_vec(y, yref, 1e-6, what + " forward");

    Tensor r = randn(ys, seed++);
    const Vec rv = values(r);
    Shape s2;
    const Vec gx = fd_grad([&](const Vec& X) { return dot(rv, conv_ref(X, cs.xs, wv, cs.ws, bv, cs.a, s2)); }, xv);
    const Vec gw = fd_grad([&](const Vec& Wt) { return dot(rv, conv_ref(xv, cs.xs, Wt, cs.ws, bv, cs.a, s2)); }, wv);
    const Vec gb = fd_grad([&](const Vec& B) { return dot(rv, conv_ref(xv, cs.xs, wv, cs.ws, B, cs.a, s2)); }, bv);

    Tensor dx = nan_tensor(cs.xs), dw = randn(cs.ws, seed++), db = randn({cs.ws[0]}, seed++);
    const Vec dw0 = values(dw), db0 = values(db);
    ops::conv3d_backward(x, w, r, cs.a, &dx, &dw, &db);
    expect_near_vec(dx, gx, kTol, what + " dx");
    expect_near_vec(dw, add(dw0, gw), kTol, what + " dw (+=)");
    expect_near_vec(db, add(db0, gb), kTol, what + " db (+=)");
    // Again: dx overwritten, dw/db accumulate twice.
    ops::conv3d_backward(x, w, r, cs.a, &dx, &dw, &db);
    expect_near_vec(dx, gx, kTol, what + " dx (second call)");
    expect_near_vec(dw, add(dw0, add(gw, gw)), kTol, what + " dw (twice)");
    expect_near_vec(db, add(db0, add(gb, gb)), kTol, what + " db (twice)");
    // Each output alone.
    Tensor dx2 = nan_tensor(cs.xs), dw2 = Tensor::zeros(cs.ws, DType::F32);
    Tensor db2 = Tensor::zeros({cs.ws[0]}, DType::F32);
    ops::conv3d_backward(x, w, r, cs.a, &dx2, nullptr, nullptr);
    ops::conv3d_backward(x, w, r, cs.a, nullptr, &dw2, nullptr);
    ops::conv3d_backward(x, w, r, cs.a, nullptr, nullptr, &db2);
    expect_near_vec(dx2, gx, kTol, what + " dx alone");
    expect_near_vec(dw2, gw, kTol, what + " dw alone");
    expect_near_vec(db2, gb, kTol, what + " db alone");
  }
}

TEST(VaeBackward, Conv3dBandedMatchesAdjointIdentities) {
  // A conv large enough that the CPU backward splits every output frame into several bands of
  // output rows (K = 64·27 = 1728, 160×64 outputs: 32 MiB column buffers hold 75 rows).  The
  // conv is linear in x and in w, so for the fp32 forward y = conv(x, w) (no bias)
  //   Σ dy·y = Σ dx·x = Σ dw·w   and   db = Σ dy per channel,
  // which checks dx and dw at this size without a float64 reference.
  const Shape xs{2, 64, 160, 64}, ws{8, 64, 3, 3, 3};
  const auto a = ops::Conv3dArgs::same_causal(1, 1, 1);
  Tensor x = randn(xs, 501), w = randn(ws, 502, 0.1f);
  Tensor y = ops::conv3d(x, w, nullptr, a);
  Tensor dy = randn(y.shape(), 503);
  Tensor dx = nan_tensor(xs), dw = Tensor::zeros(ws, DType::F32), db = Tensor::zeros({8}, DType::F32);
  ops::conv3d_backward(x, w, dy, a, &dx, &dw, &db);
  const double yy = dot(values(dy), values(y));
  const double xx = dot(values(dx), values(x));
  const double ww = dot(values(dw), values(w));
  const double scale = std::sqrt(dot(values(dy), values(dy)) * dot(values(y), values(y)));
  EXPECT_NEAR(xx, yy, 1e-5 * scale) << "<dx, x> vs <dy, y>";
  EXPECT_NEAR(ww, yy, 1e-5 * scale) << "<dw, w> vs <dy, y>";
  const Vec g = values(dy);
  const int64_t HWo = y.size(2) * y.size(3);
  for (int64_t co = 0; co < 8; ++co) {
    double s = 0;
    for (int64_t t = 0; t < y.size(0); ++t)
      for (int64_t i = 0; i < HWo; ++i) s += g[size_t((t * 8 + co) * HWo + i)];
    EXPECT_NEAR(values(db)[size_t(co)], s, 1e-4 * std::sqrt(double(2 * HWo)));
  }
}

TEST(VaeBackward, ChannelRmsNormMatchesFiniteDifferences) {
  uint32_t seed = 100;
  for (bool silu : {false, true})
    for (const Shape& xs : {Shape{3, 5, 2, 3}, Shape{2, 4, 7}, Shape{1, 6, 2, 2, 2}}) {
      const std::string what = std::string(silu ? "norm+silu " : "norm ") + shape_str(xs);
      const int64_t C = xs[1];
      Tensor x = randn(xs, seed++), g = randn({C, 1, 1, 1}, seed++, 0.7f), r = randn(xs, seed++);
      const Vec xv = values(x), gv = values(g), rv = values(r);
      Tensor y = Tensor::empty(xs, DType::F32);
      ops::channel_rms_norm(x, g, silu, y);
      expect_near_vec(y, norm_ref(xv, xs, gv, silu), 1e-6, what + " forward");
      const Vec gx = fd_grad([&](const Vec& X) { return dot(rv, norm_ref(X, xs, gv, silu)); }, xv);
      const Vec gg = fd_grad([&](const Vec& G) { return dot(rv, norm_ref(xv, xs, G, silu)); }, gv);
      Tensor dx = nan_tensor(xs), dg = randn({C, 1, 1, 1}, seed++);  // dgamma in the ckpt shape
      const Vec dg0 = values(dg);
      ops::channel_rms_norm_backward(x, g, silu, r, dx, &dg);
      expect_near_vec(dx, gx, kTol, what + " dx");
      expect_near_vec(dg, add(dg0, gg), kTol, what + " dgamma (+=)");
      Tensor dx2 = nan_tensor(xs);
      ops::channel_rms_norm_backward(x, g.view({C}), silu, r, dx2, nullptr);
      expect_near_vec(dx2, gx, kTol, what + " dx without dgamma");
    }
}

TEST(VaeBackward, ChannelRmsNormClampRegionIsFinite) {
  // A position whose channel vector is exactly 0 (zero padding frames, dead pixels): the forward
  // clamps the norm to 1e-12, so y = 0 there and the backward must stay finite (dx = 1e12·a).
  Tensor x = randn({1, 3, 4}, 7);
  float* p = x.data<float>();
  for (int c = 0; c < 3; ++c) p[c * 4 + 1] = 0.f;
  Tensor g = randn({3}, 8), r = randn({1, 3, 4}, 9), dx = nan_tensor({1, 3, 4});
  Tensor dg = Tensor::zeros({3}, DType::F32);
  ops::channel_rms_norm_backward(x, g, true, r, dx, &dg);
  for (float v : dx.to_float_vector()) EXPECT_TRUE(std::isfinite(v));
  for (float v : dg.to_float_vector()) EXPECT_TRUE(std::isfinite(v));
}

TEST(VaeBackward, UpsampleMatchesFiniteDifferences) {
  const Shape xs{2, 3, 3, 4};
  Tensor x = randn(xs, 1), r = randn({2, 3, 6, 8}, 2);
  const Vec xv = values(x), rv = values(r);
  Tensor y = Tensor::empty({2, 3, 6, 8}, DType::F32);
  ops::upsample_nearest2x(x, y);
  expect_near_vec(y, up_ref(xv, xs), 1e-7, "upsample forward");
  const Vec gx = fd_grad([&](const Vec& X) { return dot(rv, up_ref(X, xs)); }, xv);
  Tensor dx = nan_tensor(xs);
  ops::upsample_nearest2x_backward(r, dx);
  expect_near_vec(dx, gx, kTol, "upsample dx");
}

TEST(VaeBackward, SpatialAttentionMatchesFiniteDifferences) {
  for (auto [N, C, L] : {std::array<int64_t, 3>{2, 3, 7}, std::array<int64_t, 3>{1, 4, 12},
                         std::array<int64_t, 3>{3, 1, 1}}) {
    const std::string what = "attention N" + std::to_string(N) + " C" + std::to_string(C) + " L" +
                             std::to_string(L);
    Tensor qkv = randn({N, 3 * C, L}, uint32_t(N * 100 + C * 10 + L)), r = randn({N, C, L}, 77);
    const Vec qv = values(qkv), rv = values(r);
    Tensor o = Tensor::empty({N, C, L}, DType::F32);
    ops::spatial_attention(qkv, o);
    expect_near_vec(o, attn_ref(qv, N, C, L), 1e-6, what + " forward");
    const Vec gq = fd_grad([&](const Vec& Q) { return dot(rv, attn_ref(Q, N, C, L)); }, qv);
    Tensor d = nan_tensor({N, 3 * C, L});
    ops::spatial_attention_backward(qkv, r, d);
    expect_near_vec(d, gq, kTol, what + " dqkv");
  }
}

TEST(VaeBackward, BadArgumentsThrowClearErrors) {
  Tensor x = randn({3, 2, 4, 4}, 1), w = randn({2, 2, 3, 3, 3}, 2);
  const auto a = ops::Conv3dArgs::same_causal(1, 1, 1);
  Tensor dy = randn({3, 2, 4, 4}, 3), bad_dy = randn({3, 2, 4, 3}, 4);
  Tensor dx = Tensor::zeros({3, 2, 4, 4}, DType::F32), dw = Tensor::zeros({2, 2, 3, 3, 3}, DType::F32);
  EXPECT_THROW(ops::conv3d_backward(x, w, bad_dy, a, &dx, &dw, nullptr), Error);
  Tensor dw_bad = Tensor::zeros({2, 2, 3, 3, 1}, DType::F32);
  EXPECT_THROW(ops::conv3d_backward(x, w, dy, a, &dx, &dw_bad, nullptr), Error);
  EXPECT_THROW(ops::conv3d_backward(x, w, dy, a, &x, nullptr, nullptr), Error);  // aliases x
  Tensor undefined;
  EXPECT_THROW(ops::conv3d_backward(x, w, dy, a, &undefined, nullptr, nullptr), Error);
  Tensor g = randn({3}, 5);
  EXPECT_THROW(ops::channel_rms_norm_backward(x, g, true, dy, dx, nullptr), Error);  // C = 2
  Tensor odd = randn({1, 1, 3, 4}, 6), up_dx = Tensor::zeros({1, 1, 1, 2}, DType::F32);
  EXPECT_THROW(ops::upsample_nearest2x_backward(odd, up_dx), Error);
  Tensor qkv = randn({1, 5, 4}, 7), dq = Tensor::zeros({1, 5, 4}, DType::F32);
  EXPECT_THROW(ops::spatial_attention_backward(qkv, randn({1, 1, 4}, 8), dq), Error);
}

TEST(VaeBackward, IndependentOfThreadCount) {
  // Sizes above the OpenMP thresholds; 1 and 3 threads must give the same bits in osp's own
  // loops (the norm, the upsample, db and the col2im scatter). The GEMMs are OpenBLAS's: its
  // OpenMP build runs them on the same team (ops/cpu/threads.h), and whether its threaded
  // kernels round like the one-thread kernel depends on the CPU (an AVX-512 build did here, the
  // AVX2/Zen one does not: dx and dw differed in the last bits), so what passes through a GEMM —
  // dx and dw (outputs 0, 1) and the spatial attention's dqkv (output 5) — is held to rounding.
  const Shape xs{3, 32, 40, 36}, ws{16, 32, 3, 3, 3};
  const auto a = ops::Conv3dArgs::same_causal(1, 1, 1);
  Tensor x = randn(xs, 1), w = randn(ws, 2, 0.1f), dy = randn({3, 16, 40, 36}, 3);
  Tensor g = randn({32}, 4), ny = randn(xs, 5);
  Tensor qkv = randn({2, 24, 600}, 6), dout = randn({2, 8, 600}, 7);
  Tensor up = randn({3, 32, 80, 72}, 8);
  std::vector<Tensor> got[2];
  const int saved = omp_get_max_threads();
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t == 0 ? 1 : 3);
    Tensor dx = nan_tensor(xs), dw = Tensor::zeros(ws, DType::F32), db = Tensor::zeros({16}, DType::F32);
    ops::conv3d_backward(x, w, dy, a, &dx, &dw, &db);
    Tensor ndx = nan_tensor(xs), dg = Tensor::zeros({32}, DType::F32);
    ops::channel_rms_norm_backward(x, g, true, ny, ndx, &dg);
    Tensor dq = nan_tensor({2, 24, 600});
    ops::spatial_attention_backward(qkv, dout, dq);
    Tensor udx = nan_tensor(xs);
    ops::upsample_nearest2x_backward(up, udx);
    got[t] = {dx, dw, db, ndx, dg, dq, udx};
  }
  omp_set_num_threads(saved);
  for (size_t i = 0; i < got[0].size(); ++i) {
    const auto a0 = got[0][i].to_float_vector(), a1 = got[1][i].to_float_vector();
    ASSERT_EQ(a0.size(), a1.size());
    if (i == 0 || i == 1 || i == 5) {
      expect_near_vec(got[1][i], Vec(a0.begin(), a0.end()), 1e-6, "output " + std::to_string(i) + ", 3 threads vs 1");
      continue;
    }
    EXPECT_TRUE(a0 == a1) << "output " << i << " differs between 1 and 3 threads";
  }
}

// The CUDA conv3d path setting (ops/conv.h): a round trip, and an unknown name is refused by
// name without changing the setting.
TEST(Conv3dPath, SetAndRefuseUnknown) {
  const std::string was = osp::ops::conv3d_path();
  osp::ops::set_conv3d_path("cudnn");
  EXPECT_EQ(osp::ops::conv3d_path(), "cudnn");
  try {
    osp::ops::set_conv3d_path("winograd");
    ADD_FAILURE() << "no error";
  } catch (const osp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be im2col or cudnn, got 'winograd'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(osp::ops::conv3d_path(), "cudnn");
  osp::ops::set_conv3d_path(was);
  EXPECT_EQ(osp::ops::conv3d_path(), was);
}
