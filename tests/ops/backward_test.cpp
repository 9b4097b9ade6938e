// Backward ops (backward.h) against float64 finite differences of float64 reference forwards
// written here: for a random r, L(inputs) = Σ r·y(inputs) and the op's vector-Jacobian product
// with dy = r must equal ∂L/∂input (central differences in double). Also: the accumulate (+=)
// rules, null outputs skipped, packed sequences and cross-attention, lse, and bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

#include "osp/ops/backward.h"
#include "osp/ops/cpu/cpu_ops.h"
#include "osp/ops/ops.h"
#include "ops/fd_check.h"
#include "test_util.h"

using namespace osp;
using namespace osp::fd;

namespace {

// The call throws osp::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, std::initializer_list<const char*> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const char* p : parts)
      EXPECT_NE(m.find(p), std::string::npos) << "message \"" << m << "\" lacks \"" << p << "\"";
    return;
  }
  ADD_FAILURE() << "no osp::Error thrown (expected one mentioning " << *parts.begin() << ")";
}

// A tensor labelled as CUDA memory (never dereferenced: the dispatcher must reject it first).
Tensor fake_cuda(const Shape& s) {
  static float dummy[1024];
  return Tensor::from_blob(dummy, s, DType::F32, Device::cuda(0), nullptr);
}

constexpr double kTol = 2e-5;  // fp32 op vs float64 finite differences

// ---- float64 reference forwards -------------------------------------------------------------

// LayerNorm of one row (biased variance) in double.
Vec ln_row(const double* x, int64_t C, double eps) {
  double m = 0, v = 0;
  for (int64_t c = 0; c < C; ++c) m += x[c];
  m /= C;
  for (int64_t c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
  v /= C;
  Vec y(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - m) / std::sqrt(v + eps);
  return y;
}

}  // namespace

// ================================================================= (a) GEMM, reductions, norms

TEST(Backward, LinearMatchesFiniteDifferences) {
  struct Case {
    Shape xs;
    int64_t N;
  };
  for (const Case& cs :
       {Case{{7, 5}, 3}, Case{{2, 3, 9}, 11}, Case{{1, 1}, 1}, Case{{4, 1, 17}, 6}}) {
    const int64_t K = cs.xs.back(), N = cs.N, M = shape_numel(cs.xs) / K;
    Tensor x = randn(cs.xs, 1), w = randn({N, K}, 2), b = randn({N}, 3);
    Shape ys = cs.xs;
    ys.back() = N;
    Tensor r = randn(ys, 4);
    const Vec xv = values(x), wv = values(w), bv = values(b), rv = values(r);
    auto loss = [&](const Vec& X, const Vec& W, const Vec& Bv) {
      double L = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double y = Bv[n];
          for (int64_t k = 0; k < K; ++k) y += X[m * K + k] * W[n * K + k];
          L += rv[m * N + n] * y;
        }
      return L;
    };
    const Vec gx = fd_grad([&](const Vec& X) { return loss(X, wv, bv); }, xv);
    const Vec gw = fd_grad([&](const Vec& W) { return loss(xv, W, bv); }, wv);
    const Vec gb = fd_grad([&](const Vec& Bv) { return loss(xv, wv, Bv); }, bv);

    // dx overwritten (starts NaN); dw, db accumulate onto random contents.
    Tensor dx = nan_tensor(cs.xs), dw = randn({N, K}, 5), db = randn({N}, 6);
    const Vec dw0 = values(dw), db0 = values(db);
    ops::linear_backward(x, w, r, &dx, &dw, &db);
    const std::string what = "linear " + shape_str(cs.xs) + " N=" + std::to_string(N);
    expect_near_vec(dx, gx, kTol, what + " dx");
    expect_near_vec(dw, add(dw0, gw), kTol, what + " dw (+=)");
    expect_near_vec(db, add(db0, gb), kTol, what + " db (+=)");

    // A second call adds the same gradients again; dx is overwritten, not accumulated.
    ops::linear_backward(x, w, r, &dx, &dw, &db);
    expect_near_vec(dx, gx, kTol, what + " dx (second call)");
    expect_near_vec(dw, add(dw0, add(gw, gw)), kTol, what + " dw (twice)");
    expect_near_vec(db, add(db0, add(gb, gb)), kTol, what + " db (twice)");

    // Null outputs are skipped; the others are unchanged by the skip.
    Tensor dx2 = nan_tensor(cs.xs), dw2 = Tensor::zeros({N, K}, DType::F32);
    Tensor db2 = Tensor::zeros({N}, DType::F32);
    ops::linear_backward(x, w, r, &dx2, nullptr, nullptr);
    expect_near_vec(dx2, gx, kTol, what + " dx alone");
    ops::linear_backward(x, w, r, nullptr, &dw2, nullptr);
    expect_near_vec(dw2, gw, kTol, what + " dw alone");
    ops::linear_backward(x, w, r, nullptr, nullptr, &db2);
    expect_near_vec(db2, gb, kTol, what + " db alone");
    ops::linear_backward(x, w, r, nullptr, nullptr, nullptr);  // nothing wanted: a no-op
  }
}

TEST(Backward, LinearNonContiguousInputs) {
  // x given as a transposed view: the dispatcher makes it contiguous first.
  Tensor xt = randn({6, 4}, 7), w = randn({3, 6}, 8), r = randn({4, 3}, 9);
  Tensor x = xt.transpose(0, 1);
  Tensor dx1 = nan_tensor({4, 6}), dx2 = nan_tensor({4, 6});
  Tensor dw1 = Tensor::zeros({3, 6}, DType::F32), dw2 = Tensor::zeros({3, 6}, DType::F32);
  ops::linear_backward(x, w, r, &dx1, &dw1, nullptr);
  ops::linear_backward(x.contiguous(), w, r, &dx2, &dw2, nullptr);
  osp::test::expect_same_bits(dx1, dx2, "dx");
  osp::test::expect_same_bits(dw1, dw2, "dw");
}

TEST(Backward, LinearErrors) {
  const char* op = "ops::linear_backward";
  Tensor x = randn({4, 8}, 1), w = randn({3, 8}, 2), r = randn({4, 3}, 3);
  Tensor dx = Tensor::empty({4, 8}, DType::F32), dw = Tensor::zeros({3, 8}, DType::F32);
  Tensor db = Tensor::zeros({3}, DType::F32);
  Tensor w_bad = randn({3, 7}, 2), r_bad = randn({4, 4}, 3);
  expect_error([&] { ops::linear_backward(x, w_bad, r, &dx, &dw, &db); }, {op, "K = 8"});
  expect_error([&] { ops::linear_backward(x, w, r_bad, &dx, &dw, &db); }, {op, "dy", "[4, 3]"});
  Tensor dx_bad = Tensor::empty({4, 7}, DType::F32);
  expect_error([&] { ops::linear_backward(x, w, r, &dx_bad, &dw, &db); }, {op, "dx", "[4, 8]"});
  Tensor dw_bad = Tensor::zeros({8, 3}, DType::F32);
  expect_error([&] { ops::linear_backward(x, w, r, &dx, &dw_bad, &db); }, {op, "dw", "[3, 8]"});
  Tensor db_bf16 = Tensor::zeros({3}, DType::BF16);
  expect_error([&] { ops::linear_backward(x, w, r, &dx, &dw, &db_bf16); }, {op, "db", "f32"});
  Tensor xb = x.to(DType::BF16);
  expect_error([&] { ops::linear_backward(xb, w, r, &dx, &dw, &db); }, {op, "x", "f32"});
  Tensor undefined;
  expect_error([&] { ops::linear_backward(x, w, r, &undefined, &dw, &db); }, {op, "dx"});
  Tensor rc = fake_cuda({4, 3});
  expect_error([&] { ops::linear_backward(x, w, rc, &dx, &dw, &db); }, {op, "dy", "cuda:0"});
  Tensor dx_nc = Tensor::empty({8, 4}, DType::F32).transpose(0, 1);
  expect_error([&] { ops::linear_backward(x, w, r, &dx_nc, &dw, &db); }, {op, "contiguous"});
  Tensor dw_alias = w;
  expect_error([&] { ops::linear_backward(x, w, r, &dx, &dw_alias, &db); }, {op, "overlap"});
}

TEST(Backward, SumRowsIsTheAdjointOfBroadcast) {
  // L(v) = Σ r·y with y[i, c] = v[c] (a vector broadcast over rows): ∂L/∂v = sum_rows(r).
  const Shape s{2, 5, 7};
  Tensor v = randn({7}, 1), r = randn(s, 2);
  const Vec rv = values(r);
  auto loss = [&](const Vec& V) {
    double L = 0;
    for (size_t i = 0; i < rv.size(); ++i) L += rv[i] * V[i % 7];
    return L;
  };
  const Vec want = fd_grad(loss, values(v));
  Tensor out = Tensor::zeros({7}, DType::F32);
  ops::sum_rows(r, out);
  expect_near_vec(out, want, kTol, "sum_rows vs finite differences");
}

TEST(Backward, SumRows) {
  for (const Shape& s : {Shape{7, 5}, Shape{2, 3, 4}, Shape{1, 1}, Shape{1000, 3}, Shape{0, 4}}) {
    Tensor x = randn(s, 11), out = randn({s.back()}, 12);
    const Vec xv = values(x), o0 = values(out);
    const int64_t C = s.back(), R = shape_numel(s) / C;
    Vec want = o0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) want[c] += xv[r * C + c];
    ops::sum_rows(x, out);
    expect_near_vec(out, want, 1e-6, "sum_rows " + shape_str(s));
  }
  // Large: many chunks, still tight (double accumulation) and independent of the thread count
  // by construction (fixed chunks), so two calls give the same bits.
  Tensor x = randn({20000, 33}, 13, 1.f, 3.f);
  Tensor a = Tensor::zeros({33}, DType::F32), b = Tensor::zeros({33}, DType::F32);
  ops::sum_rows(x, a);
  ops::sum_rows(x, b);
  osp::test::expect_same_bits(a, b, "sum_rows repeat");
  const Vec xv = values(x);
  Vec want(33, 0.0);
  for (int64_t r = 0; r < 20000; ++r)
    for (int c = 0; c < 33; ++c) want[c] += xv[r * 33 + c];
  expect_near_vec(a, want, 1e-7, "sum_rows large");

  const char* op = "ops::sum_rows";
  Tensor bad = Tensor::zeros({5}, DType::F32), bf = Tensor::zeros({33}, DType::BF16);
  expect_error([&] { ops::sum_rows(x, bad); }, {op, "out", "[33]"});
  expect_error([&] { ops::sum_rows(x, bf); }, {op, "out", "f32"});
  Tensor xb = x.to(DType::BF16);
  expect_error([&] { ops::sum_rows(xb, a); }, {op, "x", "f32"});
}

namespace {

// The three LayerNorm flavours share one check: y = LN(x)·m + s with m, s per column.
enum class Norm { LayerNormAffine, LayerNormPlain, Modulate, Rms };

// float64 forward: y[r, c] given x, p1 (w or scale), p2 (b or shift).
Vec norm_forward(Norm kind, const Vec& x, const Vec& p1, const Vec& p2, int64_t R, int64_t C,
                 double eps) {
  Vec y(x.size());
  for (int64_t r = 0; r < R; ++r) {
    const double* xr = x.data() + r * C;
    if (kind == Norm::Rms) {
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += xr[c] * xr[c];
      const double rr = 1 / std::sqrt(ss / C + eps);
      for (int64_t c = 0; c < C; ++c) y[r * C + c] = xr[c] * rr * p1[c];
      continue;
    }
    const Vec n = ln_row(xr, C, eps);
    for (int64_t c = 0; c < C; ++c) {
      double v = n[c];
      if (kind == Norm::LayerNormAffine) v = v * p1[c] + p2[c];
      if (kind == Norm::Modulate) v = v * (1 + p1[c]) + p2[c];
      y[r * C + c] = v;
    }
  }
  return y;
}

void check_norm(Norm kind, const Shape& s, uint32_t seed) {
  const int64_t C = s.back(), R = shape_numel(s) / C;
  const float eps = kind == Norm::Rms ? 1e-6f : 1e-5f;
  Tensor x = randn(s, seed, 2.f, 0.5f);
  Tensor p1 = randn({C}, seed + 1, 0.5f, kind == Norm::Rms ? 1.f : 0.f);
  Tensor p2 = randn({C}, seed + 2), r = randn(s, seed + 3);
  const Vec xv = values(x), p1v = values(p1), p2v = values(p2), rv = values(r);
  auto loss = [&](const Vec& X, const Vec& P1, const Vec& P2) {
    return dot(rv, norm_forward(kind, X, P1, P2, R, C, eps));
  };
  const Vec gx = fd_grad([&](const Vec& X) { return loss(X, p1v, p2v); }, xv);
  const Vec g1 = fd_grad([&](const Vec& P) { return loss(xv, P, p2v); }, p1v);
  const Vec g2 = fd_grad([&](const Vec& P) { return loss(xv, p1v, P); }, p2v);
  const std::string what = "norm " + std::to_string(int(kind)) + " " + shape_str(s);
  // dx is rstd·(g − mean(g) − x̂·mean(g·x̂)): its size before cancellation is ‖g‖·max rstd.
  double gnorm = 0, rstd_max = 0;
  for (int64_t i = 0; i < R; ++i) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += xv[i * C + c] / C;
    for (int64_t c = 0; c < C; ++c)
      v += (kind == Norm::Rms ? xv[i * C + c] * xv[i * C + c]
                              : (xv[i * C + c] - m) * (xv[i * C + c] - m)) / C;
    rstd_max = std::max(rstd_max, 1 / std::sqrt(v + eps));
    for (int64_t c = 0; c < C; ++c) {
      const double mult = kind == Norm::LayerNormPlain ? 1
                          : kind == Norm::Modulate     ? 1 + p1v[c]
                                                       : p1v[c];
      gnorm += rv[i * C + c] * mult * rv[i * C + c] * mult;
    }
  }
  const double dx_floor = std::sqrt(gnorm) * rstd_max;

  for (int wanted = 0; wanted < 4; ++wanted) {  // bit 0: first param grad, bit 1: second
    const bool w1 = wanted & 1, w2 = wanted & 2;
    if (kind == Norm::LayerNormPlain && wanted) continue;
    if (kind == Norm::Rms && w2) continue;
    Tensor dx = nan_tensor(s), d1 = randn({C}, seed + 4), d2 = randn({C}, seed + 5);
    const Vec d10 = values(d1), d20 = values(d2);
    Tensor* o1 = w1 ? &d1 : nullptr;
    Tensor* o2 = w2 ? &d2 : nullptr;
    switch (kind) {
      case Norm::LayerNormAffine: ops::layer_norm_backward(x, &p1, eps, r, dx, o1, o2); break;
      case Norm::LayerNormPlain:
        ops::layer_norm_backward(x, nullptr, eps, r, dx, nullptr, nullptr);
        break;
      case Norm::Modulate: ops::layer_norm_modulate_backward(x, p1, eps, r, dx, o2, o1); break;
      case Norm::Rms: ops::rms_norm_backward(x, p1, eps, r, dx, o1); break;
    }
    const std::string wh = what + " wanted=" + std::to_string(wanted);
    expect_near_vec(dx, gx, kTol, wh + " dx", dx_floor);
    expect_near_vec(d1, w1 ? add(d10, g1) : d10, kTol, wh + " d(w|scale) (+=)");
    expect_near_vec(d2, w2 ? add(d20, g2) : d20, kTol, wh + " d(b|shift) (+=)");
  }
}

}  // namespace

TEST(Backward, NormsMatchFiniteDifferences) {
  uint32_t seed = 100;
  for (Norm kind : {Norm::LayerNormAffine, Norm::LayerNormPlain, Norm::Modulate, Norm::Rms})
    for (const Shape& s : {Shape{5, 7}, Shape{2, 3, 16}, Shape{1, 1}, Shape{3, 2}, Shape{1, 33}})
      check_norm(kind, s, seed += 10);
}

TEST(Backward, NormsLargeMatchesSmallRows) {
  // Many rows (the parallel, chunked path) against the same rows one at a time.
  const int64_t R = 3000, C = 40;
  Tensor x = randn({R, C}, 1), w = randn({C}, 2), r = randn({R, C}, 3);
  Tensor dx = nan_tensor({R, C}), dw = Tensor::zeros({C}, DType::F32),
         db = Tensor::zeros({C}, DType::F32);
  ops::layer_norm_backward(x, &w, 1e-5f, r, dx, &dw, &db);
  Vec dw_want(C, 0.0), db_want(C, 0.0);
  for (int64_t i = 0; i < R; i += 1) {
    Tensor xi = x.slice(0, i, i + 1), ri = r.slice(0, i, i + 1);
    Tensor dxi = nan_tensor({1, C}), dwi = Tensor::zeros({C}, DType::F32),
           dbi = Tensor::zeros({C}, DType::F32);
    ops::layer_norm_backward(xi, &w, 1e-5f, ri, dxi, &dwi, &dbi);
    osp::test::expect_same_bits(dxi, dx.slice(0, i, i + 1).contiguous(), "dx row");
    const Vec a = values(dwi), b = values(dbi);
    for (int64_t c = 0; c < C; ++c) dw_want[c] += a[c], db_want[c] += b[c];
    if (HasFailure()) return;
  }
  expect_near_vec(dw, dw_want, 1e-6, "dw");
  expect_near_vec(db, db_want, 1e-6, "db");
}

TEST(Backward, NormErrors) {
  Tensor x = randn({4, 8}, 1), w = randn({8}, 2), r = randn({4, 8}, 3);
  Tensor dx = Tensor::empty({4, 8}, DType::F32), dw = Tensor::zeros({8}, DType::F32);
  const char* ln = "ops::layer_norm_backward";
  expect_error([&] { ops::layer_norm_backward(x, nullptr, 1e-5f, r, dx, &dw, nullptr); },
               {ln, "no affine", "null"});
  Tensor r_bad = randn({4, 7}, 3);
  expect_error([&] { ops::layer_norm_backward(x, &w, 1e-5f, r_bad, dx, &dw, nullptr); },
               {ln, "dy", "[4, 8]"});
  Tensor dw_bad = Tensor::zeros({7}, DType::F32);
  expect_error([&] { ops::layer_norm_backward(x, &w, 1e-5f, r, dx, &dw_bad, nullptr); },
               {ln, "dw", "[8]"});
  expect_error([&] { ops::layer_norm_backward(x, &w, 0.f, r, dx, &dw, nullptr); }, {ln, "eps"});
  expect_error([&] { ops::layer_norm_backward(x, &w, 1e-5f, r, r, &dw, nullptr); },
               {ln, "overlap"});
  const char* lm = "ops::layer_norm_modulate_backward";
  Tensor sc_bad = randn({8}, 4).to(DType::BF16);
  expect_error(
      [&] { ops::layer_norm_modulate_backward(x, sc_bad, 1e-6f, r, dx, nullptr, nullptr); },
               {lm, "scale", "f32"});
  Tensor dsh = Tensor::zeros({8}, DType::F32);
  expect_error([&] { ops::layer_norm_modulate_backward(x, w, 1e-6f, r, dx, &dsh, &dsh); },
               {lm, "different"});
  const char* rm = "ops::rms_norm_backward";
  Tensor dxb = Tensor::empty({4, 8}, DType::BF16);
  expect_error([&] { ops::rms_norm_backward(x, w, 1e-6f, r, dxb, &dw); }, {rm, "dx", "f32"});
  Tensor xc = fake_cuda({4, 8});
  expect_error([&] { ops::rms_norm_backward(xc, w, 1e-6f, r, dx, &dw); }, {rm, "cuda:0"});
}

// ================================================================= (b) elementwise, RoPE

TEST(Backward, GeluSiluMatchFiniteDifferences) {
  for (const Shape& s : {Shape{3, 5}, Shape{2, 3, 7}, Shape{1}, Shape{64, 9}}) {
    Tensor x = randn(s, 21, 2.5f), r = randn(s, 22);
    const Vec xv = values(x), rv = values(r);
    auto gelu = [](double v) {
      return 0.5 * v * (1 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    };
    auto silu = [](double v) { return v / (1 + std::exp(-v)); };
    for (int which = 0; which < 2; ++which) {
      auto loss = [&](const Vec& X) {
        double L = 0;
        for (size_t i = 0; i < X.size(); ++i) L += rv[i] * (which ? silu(X[i]) : gelu(X[i]));
        return L;
      };
      const Vec gx = fd_grad(loss, xv);
      Tensor dx = nan_tensor(s);
      if (which)
        ops::silu_backward(x, r, dx);
      else
        ops::gelu_tanh_backward(x, r, dx);
      expect_near_vec(dx, gx, kTol, std::string(which ? "silu " : "gelu ") + shape_str(s));
    }
  }
  // Large magnitudes: saturated tails stay finite and correct.
  Tensor x = Tensor::from_vector({-30.f, -9.f, 0.f, 9.f, 30.f}, {5});
  Tensor r = Tensor::from_vector({1.f, 1.f, 1.f, 1.f, 1.f}, {5});
  Tensor dx = nan_tensor({5});
  ops::gelu_tanh_backward(x, r, dx);
  expect_near_vec(dx, {0, 0, 0.5, 1, 1}, 1e-6, "gelu tails");
  ops::silu_backward(x, r, dx);
  const Vec sv = values(dx);
  EXPECT_NEAR(sv[0], 0, 1e-11);
  EXPECT_NEAR(sv[2], 0.5, 1e-7);
  EXPECT_NEAR(sv[4], 1, 1e-7);
}

TEST(Backward, AddGatedMatchesFiniteDifferences) {
  for (const Shape& s : {Shape{5, 7}, Shape{2, 3, 4}, Shape{1, 1}, Shape{3000, 5}}) {
    const int64_t C = s.back(), R = shape_numel(s) / C;
    Tensor y = randn(s, 31), gate = randn({C}, 32), r = randn(s, 33);
    const Vec yv = values(y), gv = values(gate), rv = values(r);
    auto loss = [&](const Vec& Y, const Vec& G) {
      double L = 0;  // x_out = x_in + y·gate; the x_in part is linear with gradient r itself
      for (int64_t i = 0; i < R; ++i)
        for (int64_t c = 0; c < C; ++c) L += rv[i * C + c] * Y[i * C + c] * G[c];
      return L;
    };
    const Vec gy = R * C < 500 ? fd_grad([&](const Vec& Y) { return loss(Y, gv); }, yv) : Vec{};
    const Vec gg = fd_grad([&](const Vec& G) { return loss(yv, G); }, gv);
    Tensor dy = nan_tensor(s), dgate = randn({C}, 34);
    const Vec dg0 = values(dgate);
    ops::add_gated_backward(r, y, gate, dy, &dgate);
    if (!gy.empty()) expect_near_vec(dy, gy, kTol, "add_gated dy " + shape_str(s));
    Vec dy_exact(yv.size());  // dy = dx·gate, exactly in fp32
    for (int64_t i = 0; i < R; ++i)
      for (int64_t c = 0; c < C; ++c)
        dy_exact[i * C + c] = double(float(rv[i * C + c]) * float(gv[c]));
    expect_near_vec(dy, dy_exact, 1e-12, "add_gated dy exact " + shape_str(s));
    expect_near_vec(dgate, add(dg0, gg), kTol, "add_gated dgate (+=) " + shape_str(s));
    Tensor dy2 = nan_tensor(s);
    ops::add_gated_backward(r, y, gate, dy2, nullptr);  // dgate skipped
    osp::test::expect_same_bits(dy2, dy, "add_gated dy without dgate");
  }
}

TEST(Backward, RopeMatchesFiniteDifferences) {
  struct Case {
    int64_t R, Rt, L, H, D;
  };
  for (const Case& c : {Case{1, 1, 3, 2, 4}, Case{4, 2, 5, 3, 6}, Case{2, 1, 1, 1, 2}}) {
    Tensor x = randn({c.R, c.L, c.H, c.D}, 41), r = randn({c.R, c.L, c.H, c.D}, 42);
    std::vector<float> tab(size_t(c.Rt * c.L * c.D));
    std::mt19937 g(43);
    std::uniform_real_distribution<float> ang(-3.f, 3.f);
    for (size_t i = 0; i < tab.size(); i += 2) {
      const float a = ang(g);
      tab[i] = std::cos(a), tab[i + 1] = std::sin(a);
    }
    Tensor cs = Tensor::from_vector(tab, {c.Rt, c.L, c.D / 2, 2});
    const Vec rv = values(r);
    auto loss = [&](const Vec& X) {
      double L = 0;
      for (int64_t rr = 0; rr < c.R; ++rr)
        for (int64_t l = 0; l < c.L; ++l)
          for (int64_t h = 0; h < c.H; ++h)
            for (int64_t p = 0; p < c.D / 2; ++p) {
              const size_t t = size_t((((rr % c.Rt) * c.L + l) * (c.D / 2) + p) * 2);
              const size_t b = size_t(((rr * c.L + l) * c.H + h) * c.D + 2 * p);
              const double co = tab[t], si = tab[t + 1];
              L += rv[b] * (X[b] * co - X[b + 1] * si) + rv[b + 1] * (X[b] * si + X[b + 1] * co);
            }
      return L;
    };
    const Vec gx = fd_grad(loss, values(x));
    Tensor dx = nan_tensor(x.shape());
    ops::rope_backward(r, cs, dx);
    expect_near_vec(dx, gx, kTol, "rope");
    // The adjoint undoes the forward (rotations are orthogonal).
    Tensor y = nan_tensor(x.shape()), back = nan_tensor(x.shape());
    ops::rope(x, cs, y);
    ops::rope_backward(y, cs, back);
    expect_near_vec(back, values(x), 1e-6, "rope_backward(rope(x)) = x");
    // In place.
    Tensor inplace = r.clone();
    ops::rope_backward(inplace, cs, inplace);
    osp::test::expect_same_bits(inplace, dx, "rope_backward in place");
  }
}

TEST(Backward, ElementwiseAndRopeErrors) {
  Tensor x = randn({4, 6}, 1), r = randn({4, 6}, 2), dx = Tensor::empty({4, 6}, DType::F32);
  const char* ge = "ops::gelu_tanh_backward";
  Tensor r_bad = randn({4, 5}, 2);
  expect_error([&] { ops::gelu_tanh_backward(x, r_bad, dx); }, {ge, "dy", "[4, 6]"});
  Tensor dx_bf = Tensor::empty({4, 6}, DType::BF16);
  expect_error([&] { ops::gelu_tanh_backward(x, r, dx_bf); }, {ge, "dx", "f32"});
  expect_error([&] { ops::silu_backward(x, r, r); }, {"ops::silu_backward", "overlap"});
  Tensor xc = fake_cuda({4, 6});
  expect_error([&] { ops::silu_backward(xc, r, dx); }, {"ops::silu_backward", "cuda:0"});

  const char* ag = "ops::add_gated_backward";
  Tensor gate = randn({6}, 3), gate_bad = randn({5}, 3), dg = Tensor::zeros({6}, DType::F32);
  expect_error([&] { ops::add_gated_backward(r, x, gate_bad, dx, &dg); }, {ag, "gate", "[6]"});
  Tensor rb = r.to(DType::BF16);
  expect_error([&] { ops::add_gated_backward(rb, x, gate, dx, &dg); }, {ag, "residual", "f32"});
  Tensor dg_bad = Tensor::zeros({4}, DType::F32);
  expect_error([&] { ops::add_gated_backward(r, x, gate, dx, &dg_bad); }, {ag, "dgate", "[6]"});
  expect_error([&] { ops::add_gated_backward(r, x, gate, dx, &gate); }, {ag, "overlap"});

  const char* ro = "ops::rope_backward";
  Tensor d4 = randn({2, 3, 2, 4}, 4), o4 = Tensor::empty({2, 3, 2, 4}, DType::F32);
  Tensor cs = randn({1, 3, 2, 2}, 5), cs_bad = randn({1, 4, 2, 2}, 5), cs3 = randn({3, 3, 2, 2}, 5);
  expect_error([&] { ops::rope_backward(d4, cs_bad, o4); }, {ro, "cos_sin", "[Rt, 3, 2, 2]"});
  expect_error([&] { ops::rope_backward(d4, cs3, o4); }, {ro, "divide"});
  Tensor d5 = randn({2, 3, 2, 5}, 4), o5 = Tensor::empty({2, 3, 2, 5}, DType::F32);
  expect_error([&] { ops::rope_backward(d5, cs, o5); }, {ro, "even"});
  Tensor big = randn({3, 3, 2, 4}, 6);
  Tensor part_in = big.slice(0, 0, 2), part_out = big.slice(0, 1, 3);
  expect_error([&] { ops::rope_backward(part_in, cs, part_out); }, {ro, "overlap"});
}

// ================================================================= (c) attention

namespace {

struct AttnShape {
  int64_t B, Lq, Lk, H, D;
  float scale;                // 0: 1/sqrt(D)
  std::vector<int32_t> seqs;  // packed sequence lengths (empty: none)
};

struct AttnRef {
  Vec out, lse, dq, dk, dv;
};

// float64 attention forward (and, given dout, its analytic backward) per (sample, head,
// sequence), straight from the definitions.
AttnRef attn_ref(const AttnShape& a, const Vec& q, const Vec& k, const Vec& v,
                 const Vec* dout = nullptr) {
  const int64_t B = a.B, Lq = a.Lq, Lk = a.Lk, H = a.H, D = a.D;
  const double scale = a.scale > 0 ? a.scale : 1 / std::sqrt(double(D));
  std::vector<std::array<int64_t, 4>> seqs;  // q0, nq, k0, nk
  if (a.seqs.empty()) {
    seqs.push_back({0, Lq, 0, Lk});
  } else {
    int64_t off = 0;
    for (int32_t n : a.seqs) seqs.push_back({off, n, off, n}), off += n;
  }
  AttnRef r{Vec(q.size()), Vec(size_t(B * H * Lq)), Vec(q.size()), Vec(k.size()), Vec(v.size())};
  auto qi = [&](int64_t b, int64_t i, int64_t h) { return size_t(((b * Lq + i) * H + h) * D); };
  auto kj = [&](int64_t b, int64_t j, int64_t h) { return size_t(((b * Lk + j) * H + h) * D); };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (const auto& sq : seqs)
        for (int64_t i = sq[0]; i < sq[0] + sq[1]; ++i) {
          Vec s(static_cast<size_t>(sq[3]));
          double m = -1e300;
          for (int64_t j = 0; j < sq[3]; ++j) {
            double d = 0;
            for (int64_t c = 0; c < D; ++c) d += q[qi(b, i, h) + c] * k[kj(b, sq[2] + j, h) + c];
            s[j] = scale * d;
            m = std::max(m, s[j]);
          }
          double l = 0;
          for (auto& x : s) l += (x = std::exp(x - m));
          for (auto& x : s) x /= l;  // P
          r.lse[size_t((b * H + h) * Lq + i)] = m + std::log(l);
          for (int64_t j = 0; j < sq[3]; ++j)
            for (int64_t c = 0; c < D; ++c)
              r.out[qi(b, i, h) + c] += s[j] * v[kj(b, sq[2] + j, h) + c];
          if (!dout) continue;
          const double* g = dout->data() + qi(b, i, h);
          Vec dp(static_cast<size_t>(sq[3]));
          double delta = 0;
          for (int64_t j = 0; j < sq[3]; ++j) {
            for (int64_t c = 0; c < D; ++c) dp[j] += g[c] * v[kj(b, sq[2] + j, h) + c];
            delta += s[j] * dp[j];
          }
          for (int64_t j = 0; j < sq[3]; ++j) {
            const double ds = s[j] * (dp[j] - delta) * scale;
            const size_t kb = kj(b, sq[2] + j, h);
            for (int64_t c = 0; c < D; ++c) {
              r.dv[kb + c] += s[j] * g[c];
              r.dq[qi(b, i, h) + c] += ds * k[kb + c];
              r.dk[kb + c] += ds * q[qi(b, i, h) + c];
            }
          }
        }
  return r;
}

struct AttnRun {
  Tensor q, k, v, r, out, lse, dq, dk, dv;
  Tensor seq;
  ops::AttentionArgs args;
};

AttnRun attn_run(const AttnShape& a, uint32_t seed, float sd = 1.f) {
  AttnRun t;
  t.q = randn({a.B, a.Lq, a.H, a.D}, seed, sd);
  t.k = randn({a.B, a.Lk, a.H, a.D}, seed + 1, sd);
  t.v = randn({a.B, a.Lk, a.H, a.D}, seed + 2);
  t.r = randn({a.B, a.Lq, a.H, a.D}, seed + 3);
  t.args.scale = a.scale;
  if (!a.seqs.empty()) {
    t.seq = Tensor::empty({int64_t(a.seqs.size())}, DType::I32);
    std::copy(a.seqs.begin(), a.seqs.end(), t.seq.data<int32_t>());
    t.args.seq_lens = &t.seq;
  }
  t.out = nan_tensor(t.q.shape());
  t.lse = nan_tensor({a.B, a.H, a.Lq});
  ops::attention_forward_lse(t.q, t.k, t.v, t.out, t.lse, t.args);
  t.dq = nan_tensor(t.q.shape());
  t.dk = nan_tensor(t.k.shape());
  t.dv = nan_tensor(t.v.shape());
  ops::attention_backward(t.q, t.k, t.v, t.out, t.lse, t.r, t.dq, t.dk, t.dv, t.args);
  return t;
}

std::string attn_name(const AttnShape& a) {
  std::string s = "B" + std::to_string(a.B) + " Lq" + std::to_string(a.Lq) + " Lk" +
                  std::to_string(a.Lk) + " H" + std::to_string(a.H) + " D" + std::to_string(a.D);
  if (!a.seqs.empty()) {
    s += " seqs";
    for (int32_t n : a.seqs) s += " " + std::to_string(n);
  }
  return s;
}

}  // namespace

TEST(Backward, AttentionMatchesFiniteDifferences) {
  const std::vector<AttnShape> cases = {
      {2, 7, 7, 3, 5, 0.f, {}},              // self-attention
      {1, 5, 9, 2, 4, 0.3f, {}},             // cross-attention, Lq < Lk, explicit scale
      {1, 6, 3, 1, 3, 0.f, {}},              // cross-attention, Lq > Lk
      {2, 11, 11, 2, 6, 0.f, {3, 0, 1, 5, 2}},  // packed, lengths incl. 0 and 1
      {1, 12, 12, 2, 4, 0.f, {4, 4, 4}},     // packed, equal lengths
      {1, 1, 1, 1, 1, 0.f, {}},              // one key: out = v, no gradient to q or k
  };
  for (bool simd : {true, false}) {
    ops::cpu::set_simd_enabled(simd);
    uint32_t seed = 500;
    for (const AttnShape& a : cases) {
      const std::string name = attn_name(a) + (simd ? " simd" : " portable");
      AttnRun t = attn_run(a, seed += 10, 1.5f);
      const Vec qv = values(t.q), kv = values(t.k), vv = values(t.v), rv = values(t.r);
      auto loss = [&](const Vec& Q, const Vec& K, const Vec& V) {
        return dot(rv, attn_ref(a, Q, K, V).out);
      };
      const Vec gq = fd_grad([&](const Vec& X) { return loss(X, kv, vv); }, qv);
      const Vec gk = fd_grad([&](const Vec& X) { return loss(qv, X, vv); }, kv);
      const Vec gv = fd_grad([&](const Vec& X) { return loss(qv, kv, X); }, vv);
      // Where the gradient vanishes by symmetry (one key), compare against the size of dv.
      double floor = 0;
      for (double x : gv) floor = std::max(floor, std::abs(x));
      expect_near_vec(t.dq, gq, kTol, name + " dq", 1e-3 * floor);
      expect_near_vec(t.dk, gk, kTol, name + " dk", 1e-3 * floor);
      expect_near_vec(t.dv, gv, kTol, name + " dv");
      // The float64 analytic reference agrees with the finite differences too (it is used for
      // the larger shapes below).
      const AttnRef ref = attn_ref(a, qv, kv, vv, &rv);
      expect_near_vec(t.out, ref.out, 1e-5, name + " out");
      for (size_t i = 0; i < gq.size(); ++i) EXPECT_NEAR(ref.dq[i], gq[i], 1e-7 * (1 + floor));
      for (size_t i = 0; i < gk.size(); ++i) EXPECT_NEAR(ref.dk[i], gk[i], 1e-7 * (1 + floor));
      if (HasFailure()) break;
    }
  }
  ops::cpu::set_simd_enabled(true);
}

TEST(Backward, AttentionLargeAgainstFloat64Reference) {
  // Several query and key blocks with ragged edges, both task layouts (few (sample, head,
  // sequence) tasks: the two-pass layout; many: one task per sequence), packed sequences
  // longer than a block.
  const std::vector<AttnShape> cases = {
      {1, 150, 150, 1, 16, 0.f, {}},
      {1, 70, 200, 2, 8, 0.f, {}},
      {3, 97, 97, 2, 12, 0.f, {}},
      {1, 230, 230, 2, 8, 0.f, {1, 130, 0, 66, 33}},
      {2, 64, 64, 4, 64, 0.f, {}},
      {1, 300, 300, 1, 128, 0.f, {}},
  };
  for (bool simd : {true, false}) {  // the AVX2 kernels and the portable loops
    ops::cpu::set_simd_enabled(simd);
    uint32_t seed = 900;
    for (const AttnShape& a : cases) {
      const std::string name = attn_name(a) + (simd ? " simd" : " portable");
      AttnRun t = attn_run(a, seed += 10, 1.2f);
      const Vec rv = values(t.r);
      const AttnRef full = attn_ref(a, values(t.q), values(t.k), values(t.v), &rv);
      expect_near_vec(t.out, full.out, 1e-5, name + " out");
      expect_near_vec(t.lse, full.lse, 1e-6, name + " lse");
      expect_near_vec(t.dq, full.dq, 1e-5, name + " dq");
      expect_near_vec(t.dk, full.dk, 1e-5, name + " dk");
      expect_near_vec(t.dv, full.dv, 1e-5, name + " dv");
    }
  }
  ops::cpu::set_simd_enabled(true);
}

TEST(Backward, AttentionTaskLayoutsGiveTheSameBits) {
  // One (sample, head): the two-pass layout. The same data repeated in 6 samples: one task per
  // (sample, head). Every copy must equal the single run bit for bit.
  for (bool simd : {true, false}) {
    ops::cpu::set_simd_enabled(simd);
    const AttnShape one{1, 140, 140, 1, 20, 0.f, {}};
    AttnRun t = attn_run(one, 77);
    const int64_t R = 6;
    auto rep = [&](const Tensor& x) {
      Shape s = x.shape();
      s[0] = R;
      Tensor o = Tensor::empty(s, DType::F32);
      for (int64_t i = 0; i < R; ++i) o.select(0, i).copy_from(x.select(0, 0));
      return o;
    };
    Tensor q = rep(t.q), k = rep(t.k), v = rep(t.v), r = rep(t.r);
    Tensor out = nan_tensor(q.shape()), lse = nan_tensor({R, 1, 140});
    ops::attention_forward_lse(q, k, v, out, lse);
    Tensor dq = nan_tensor(q.shape()), dk = nan_tensor(k.shape()), dv = nan_tensor(v.shape());
    ops::attention_backward(q, k, v, out, lse, r, dq, dk, dv);
    for (int64_t i = 0; i < R; ++i) {
      osp::test::expect_same_bits(dq.select(0, i).contiguous(),
                                  t.dq.select(0, 0).contiguous(), "dq");
      osp::test::expect_same_bits(dk.select(0, i).contiguous(),
                                  t.dk.select(0, 0).contiguous(), "dk");
      osp::test::expect_same_bits(dv.select(0, i).contiguous(),
                                  t.dv.select(0, 0).contiguous(), "dv");
    }
  }
  ops::cpu::set_simd_enabled(true);
}

TEST(Backward, AttentionAndSumsIndependentOfThreadCount) {
  // Large enough for the parallel paths; 1 and 2 threads must give the same bits.
  const AttnShape a{1, 600, 600, 2, 64, 0.f, {}};
  const AttnShape p{1, 600, 600, 2, 64, 0.f, {100, 250, 1, 249}};
  Tensor x = randn({5000, 96}, 5);
  std::vector<Tensor> got[2];
  const int saved = omp_get_max_threads();
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t + 1);
    for (const AttnShape& s : {a, p}) {
      AttnRun r = attn_run(s, 31);
      got[t].insert(got[t].end(), {r.out, r.lse, r.dq, r.dk, r.dv});
    }
    Tensor sum = Tensor::zeros({96}, DType::F32), dx = nan_tensor({5000, 96});
    Tensor dw = Tensor::zeros({96}, DType::F32);
    ops::sum_rows(x, sum);
    ops::rms_norm_backward(x, sum, 1e-6f, x, dx, &dw);
    got[t].insert(got[t].end(), {sum, dx, dw});
  }
  omp_set_num_threads(saved);
  for (size_t i = 0; i < got[0].size(); ++i)
    osp::test::expect_same_bits(got[1][i], got[0][i], ("output " + std::to_string(i)).c_str());
}

TEST(Backward, AttentionForwardLseEqualsAttention) {
  const std::vector<AttnShape> cases = {
      {2, 7, 7, 3, 5, 0.f, {}},
      {1, 5, 9, 2, 4, 0.3f, {}},
      {2, 11, 11, 2, 6, 0.f, {3, 0, 1, 5, 2}},
      {1, 12, 12, 2, 4, 0.f, {4, 4, 4}},
      {1, 300, 300, 2, 64, 0.f, {}},
      {2, 200, 77, 2, 128, 0.f, {}},
      {1, 390, 390, 2, 64, 0.f, {130, 7, 0, 253}},
      {1, 384, 384, 2, 128, 0.f, {128, 128, 128}},
  };
  for (bool simd : {true, false}) {
    ops::cpu::set_simd_enabled(simd);
    uint32_t seed = 1300;
    for (const AttnShape& a : cases) {
      const std::string name = attn_name(a) + (simd ? " simd" : " portable");
      AttnRun t = attn_run(a, seed += 10, 2.f);
      Tensor ref = nan_tensor(t.q.shape());
      ops::attention(t.q, t.k, t.v, ref, t.args);
      osp::test::expect_same_bits(t.out, ref, name.c_str());
      // lse = log Σ_j exp(scale·q·k) over the row's keys, computed directly in double.
      const AttnRef d = attn_ref(a, values(t.q), values(t.k), values(t.v));
      expect_near_vec(t.lse, d.lse, 1e-6, name + " lse");
    }
  }
  ops::cpu::set_simd_enabled(true);
}

TEST(Backward, AttentionWithoutQueries) {
  // Lq = 0 (cross-attention of an empty query set): nothing flows back, dk and dv are zeros.
  Tensor q = Tensor::empty({2, 0, 2, 4}, DType::F32), k = randn({2, 5, 2, 4}, 1);
  Tensor v = randn({2, 5, 2, 4}, 2), out = Tensor::empty({2, 0, 2, 4}, DType::F32);
  Tensor lse = Tensor::empty({2, 2, 0}, DType::F32), dq = Tensor::empty({2, 0, 2, 4}, DType::F32);
  Tensor dk = nan_tensor({2, 5, 2, 4}), dv = nan_tensor({2, 5, 2, 4});
  ops::attention_forward_lse(q, k, v, out, lse);
  ops::attention_backward(q, k, v, out, lse, out, dq, dk, dv);
  expect_near_vec(dk, Vec(80, 0.0), 0, "dk");
  expect_near_vec(dv, Vec(80, 0.0), 0, "dv");
}

TEST(Backward, AttentionErrors) {
  const char* fw = "ops::attention_forward_lse";
  const char* bw = "ops::attention_backward";
  Tensor q = randn({1, 6, 2, 4}, 1), k = randn({1, 6, 2, 4}, 2), v = randn({1, 6, 2, 4}, 3);
  Tensor out = Tensor::empty({1, 6, 2, 4}, DType::F32), lse = Tensor::empty({1, 2, 6}, DType::F32);
  Tensor dq = Tensor::empty({1, 6, 2, 4}, DType::F32), dk = Tensor::empty({1, 6, 2, 4}, DType::F32),
         dv = Tensor::empty({1, 6, 2, 4}, DType::F32);
  ops::AttentionArgs a;
  Tensor bias = Tensor::zeros({2, 6, 6}, DType::F32);
  a.bias = &bias;
  expect_error([&] { ops::attention_forward_lse(q, k, v, out, lse, a); },
               {fw, "bias", "not supported"});
  expect_error([&] { ops::attention_backward(q, k, v, out, lse, q, dq, dk, dv, a); }, {bw, "bias"});
  ops::AttentionArgs b;
  Tensor kvl = Tensor::empty({1}, DType::I32);
  b.kv_lens = &kvl;
  expect_error([&] { ops::attention_forward_lse(q, k, v, out, lse, b); }, {fw, "kv_lens"});
  ops::AttentionArgs c;
  Tensor sl = Tensor::empty({2}, DType::I32);
  sl.data<int32_t>()[0] = 2, sl.data<int32_t>()[1] = 3;
  c.seq_lens = &sl;
  expect_error([&] { ops::attention_forward_lse(q, k, v, out, lse, c); }, {fw, "sum to 5", "6"});
  sl.data<int32_t>()[0] = 7, sl.data<int32_t>()[1] = -1;
  expect_error([&] { ops::attention_backward(q, k, v, out, lse, q, dq, dk, dv, c); },
               {bw, "seq_lens[1] = -1"});
  Tensor k9 = randn({1, 9, 2, 4}, 2), v9 = randn({1, 9, 2, 4}, 3);
  sl.data<int32_t>()[0] = 3, sl.data<int32_t>()[1] = 3;
  expect_error([&] { ops::attention_forward_lse(q, k9, v9, out, lse, c); }, {fw, "Lq == Lk"});
  Tensor lse_bad = Tensor::empty({1, 6, 2}, DType::F32);
  expect_error([&] { ops::attention_forward_lse(q, k, v, out, lse_bad); },
               {fw, "lse", "[1, 2, 6]"});
  Tensor lse_bf = Tensor::empty({1, 2, 6}, DType::BF16);
  expect_error([&] { ops::attention_backward(q, k, v, out, lse_bf, q, dq, dk, dv); },
               {bw, "lse", "f32"});
  Tensor dk_bad = Tensor::empty({1, 5, 2, 4}, DType::F32);
  expect_error([&] { ops::attention_backward(q, k, v, out, lse, q, dq, dk_bad, dv); }, {bw, "dk"});
  Tensor qb = q.to(DType::BF16);
  expect_error([&] { ops::attention_forward_lse(qb, k, v, out, lse); }, {fw, "q", "f32"});
  Tensor kc = fake_cuda({1, 6, 2, 4});
  expect_error([&] { ops::attention_backward(q, kc, v, out, lse, q, dq, dk, dv); },
               {bw, "k", "cuda:0"});
  Tensor kbad = randn({1, 6, 3, 4}, 2);
  expect_error([&] { ops::attention_forward_lse(q, kbad, v, out, lse); }, {fw, "k must be"});
  expect_error([&] { ops::attention_backward(q, k, v, out, lse, q, dq, dq, dv); }, {bw, "overlap"});
  expect_error([&] { ops::attention_backward(q, k, v, out, lse, q, q, dk, dv); }, {bw, "overlap"});
}

// ================================================================= (d) data movement

TEST(Backward, ScatterAddRowsIsTheAdjointOfGather) {
  // L(src) = Σ r·gather_rows(src, index): ∂L/∂src = scatter_add_rows(r, index) (+= onto out).
  struct Case {
    int64_t N, M, C;
  };
  for (const Case& cs : {Case{5, 8, 3}, Case{1, 4, 1}, Case{7, 3, 130}, Case{40, 3000, 70}}) {
    std::mt19937 g(61);
    std::uniform_int_distribution<int32_t> pick(-1, int32_t(cs.N) - 1);
    Tensor index = Tensor::empty({cs.M}, DType::I32);
    for (int64_t i = 0; i < cs.M; ++i) index.data<int32_t>()[i] = pick(g);  // repeats, -1s
    Tensor src = randn({cs.N, cs.C}, 62), r = randn({cs.M, cs.C}, 63);
    const Vec rv = values(r);
    const int32_t* ip = index.data<int32_t>();
    auto loss = [&](const Vec& S) {
      double L = 0;
      for (int64_t i = 0; i < cs.M; ++i)
        if (ip[i] >= 0)
          for (int64_t c = 0; c < cs.C; ++c) L += rv[i * cs.C + c] * S[ip[i] * cs.C + c];
      return L;
    };
    Vec want;
    if (cs.N * cs.C * cs.M * cs.C < 2e6) {
      want = fd_grad(loss, values(src));
    } else {  // the exact adjoint, summed in double
      want.assign(size_t(cs.N * cs.C), 0.0);
      for (int64_t i = 0; i < cs.M; ++i)
        if (ip[i] >= 0)
          for (int64_t c = 0; c < cs.C; ++c) want[ip[i] * cs.C + c] += rv[i * cs.C + c];
    }
    Tensor out = randn({cs.N, cs.C}, 64);
    const Vec out0 = values(out);
    ops::scatter_add_rows(r, index, out);
    expect_near_vec(out, add(out0, want), 1e-6, "scatter_add_rows N" + std::to_string(cs.N));
  }
}

TEST(Backward, PatchifyAdjoints) {
  struct Case {
    int64_t C, T, H, W;
    int ph, pw;
  };
  for (const Case& cs : {Case{2, 1, 4, 6, 2, 2}, Case{3, 2, 3, 5, 1, 1}, Case{1, 3, 6, 4, 3, 2}}) {
    const int64_t hh = cs.H / cs.ph, ww = cs.W / cs.pw, K = cs.C * cs.ph * cs.pw;
    const std::string name = "C" + std::to_string(cs.C) + " T" + std::to_string(cs.T) + " H" +
                             std::to_string(cs.H) + " W" + std::to_string(cs.W);
    // patchify: z [C, T, H, W] → patches [T·hh·ww, K]; float64 forward by its index map.
    {
      Tensor z = randn({cs.C, cs.T, cs.H, cs.W}, 71), r = randn({cs.T * hh * ww, K}, 72);
      const Vec rv = values(r);
      auto loss = [&](const Vec& Z) {
        double L = 0;
        for (int64_t c = 0; c < cs.C; ++c)
          for (int64_t f = 0; f < cs.T; ++f)
            for (int64_t y = 0; y < cs.H; ++y)
              for (int64_t x = 0; x < cs.W; ++x) {
                const int64_t prow = (f * hh + y / cs.ph) * ww + x / cs.pw;
                const int64_t pcol = (c * cs.ph + y % cs.ph) * cs.pw + x % cs.pw;
                L += rv[prow * K + pcol] * Z[((c * cs.T + f) * cs.H + y) * cs.W + x];
              }
        return L;
      };
      const Vec want = fd_grad(loss, values(z));
      Tensor dz = nan_tensor(z.shape());
      ops::patchify_backward(r, 1, cs.ph, cs.pw, dz);
      expect_near_vec(dz, want, 1e-9, "patchify_backward " + name);
      // ⟨patchify(z), r⟩ = ⟨z, patchify_backward(r)⟩ with the forward op itself.
      Tensor p = nan_tensor(r.shape());
      ops::patchify(z, 1, cs.ph, cs.pw, p);
      EXPECT_NEAR(dot(values(p), rv), dot(values(z), values(dz)), 1e-4) << name;
    }
    // unpatchify: y [T·hh·ww, K'] (c fastest) → out [C, T, H, W].
    {
      Tensor y = randn({cs.T * hh * ww, K}, 73), r = randn({cs.C, cs.T, cs.H, cs.W}, 74);
      const Vec rv = values(r);
      auto loss = [&](const Vec& Y) {
        double L = 0;
        for (int64_t c = 0; c < cs.C; ++c)
          for (int64_t f = 0; f < cs.T; ++f)
            for (int64_t yy = 0; yy < cs.H; ++yy)
              for (int64_t x = 0; x < cs.W; ++x) {
                const int64_t row = (f * hh + yy / cs.ph) * ww + x / cs.pw;
                const int64_t col = ((yy % cs.ph) * cs.pw + x % cs.pw) * cs.C + c;
                L += rv[((c * cs.T + f) * cs.H + yy) * cs.W + x] * Y[row * K + col];
              }
        return L;
      };
      const Vec want = fd_grad(loss, values(y));
      Tensor dy = nan_tensor(y.shape());
      ops::unpatchify_backward(r, cs.T, hh, ww, 1, cs.ph, cs.pw, dy);
      expect_near_vec(dy, want, 1e-9, "unpatchify_backward " + name);
      Tensor o = nan_tensor(r.shape());
      ops::unpatchify(y, cs.T, hh, ww, 1, cs.ph, cs.pw, o);
      EXPECT_NEAR(dot(values(o), rv), dot(values(y), values(dy)), 1e-4) << name;
    }
  }
}

TEST(Backward, DataMovementErrors) {
  const char* sa = "ops::scatter_add_rows";
  Tensor src = randn({4, 3}, 1), out = Tensor::zeros({5, 3}, DType::F32);
  Tensor index = Tensor::empty({4}, DType::I32);
  for (int i = 0; i < 4; ++i) index.data<int32_t>()[i] = i;
  index.data<int32_t>()[2] = 5;
  expect_error([&] { ops::scatter_add_rows(src, index, out); }, {sa, "index[2] = 5", "5 rows"});
  Tensor index3 = Tensor::zeros({3}, DType::I32);
  expect_error([&] { ops::scatter_add_rows(src, index3, out); }, {sa, "index", "[4]"});
  Tensor out_bad = Tensor::zeros({5, 2}, DType::F32);
  index.data<int32_t>()[2] = 0;
  expect_error([&] { ops::scatter_add_rows(src, index, out_bad); }, {sa, "out", "[N, 3]"});
  Tensor out_bf = Tensor::zeros({5, 3}, DType::BF16);
  expect_error([&] { ops::scatter_add_rows(src, index, out_bf); }, {sa, "out", "f32"});
  Tensor index_f = Tensor::zeros({4}, DType::F32);
  expect_error([&] { ops::scatter_add_rows(src, index_f, out); }, {sa, "index", "i32"});
  Tensor oc = fake_cuda({5, 3});
  expect_error([&] { ops::scatter_add_rows(src, index, oc); }, {sa, "out", "cuda:0"});

  const char* pb = "ops::patchify_backward";
  Tensor dp = randn({6, 8}, 2), dz = Tensor::empty({2, 1, 4, 6}, DType::F32);
  expect_error([&] { ops::patchify_backward(dp, 2, 2, 2, dz); }, {pb, "pt = 2"});
  Tensor dz_odd = Tensor::empty({2, 1, 5, 6}, DType::F32);
  expect_error([&] { ops::patchify_backward(dp, 1, 2, 2, dz_odd); }, {pb, "multiples"});
  Tensor dp_bad = randn({6, 7}, 2);
  expect_error([&] { ops::patchify_backward(dp_bad, 1, 2, 2, dz); }, {pb, "dpatches", "[6, 8]"});
  Tensor dp_bf = dp.to(DType::BF16);
  expect_error([&] { ops::patchify_backward(dp_bf, 1, 2, 2, dz); }, {pb, "dpatches", "f32"});

  const char* ub = "ops::unpatchify_backward";
  Tensor dout = randn({2, 1, 4, 6}, 3), dy = Tensor::empty({6, 8}, DType::F32);
  expect_error([&] { ops::unpatchify_backward(dout, 1, 3, 3, 1, 2, 2, dy); }, {ub, "dout"});
  Tensor dy_bad = Tensor::empty({6, 9}, DType::F32);
  expect_error([&] { ops::unpatchify_backward(dout, 1, 2, 3, 1, 2, 2, dy_bad); },
               {ub, "dy", "[6, 8]"});
  ops::unpatchify_backward(dout, 1, 2, 3, 1, 2, 2, dy);  // the right shapes pass
}
