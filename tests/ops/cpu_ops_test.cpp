// CPU reference ops against naive loops (double precision), plus bad-input errors.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "osp/core/dtype.h"
#include "osp/ops/cpu/cpu_ops.h"
#include "osp/ops/ops.h"
#include "test_util.h"

using namespace osp;

namespace {

Tensor randn(const Shape& s, uint32_t seed, float sd = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(size_t(shape_numel(s)));
  for (auto& x : v) x = nd(g);
  return Tensor::from_vector(v, s);
}

Tensor from_doubles(const std::vector<double>& d, const Shape& s) {
  std::vector<float> v(d.begin(), d.end());
  return Tensor::from_vector(v, s);
}

double gelu_ref(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

}  // namespace

TEST(CpuOps, LinearBiasAct) {
  const int64_t B = 2, M = 5, K = 37, N = 19;
  Tensor x = randn({B, M, K}, 1), w = randn({N, K}, 2), b = randn({N}, 3);
  auto xv = x.to_float_vector(), wv = w.to_float_vector(), bv = b.to_float_vector();
  for (auto act : {ops::Act::None, ops::Act::GeluTanh, ops::Act::Silu}) {
    for (bool with_bias : {false, true}) {
      Tensor out = Tensor::empty({B, M, N}, DType::F32);
      ops::linear(x, w, with_bias ? &b : nullptr, out, act);
      std::vector<double> ref(size_t(B * M * N));
      for (int64_t r = 0; r < B * M; ++r)
        for (int64_t n = 0; n < N; ++n) {
          double s = with_bias ? bv[n] : 0;
          for (int64_t k = 0; k < K; ++k) s += double(xv[r * K + k]) * wv[n * K + k];
          if (act == ops::Act::GeluTanh) s = gelu_ref(s);
          if (act == ops::Act::Silu) s = s / (1 + std::exp(-s));
          ref[r * N + n] = s;
        }
      EXPECT_LT(relative_error(out, from_doubles(ref, {B, M, N})), 1e-6);
    }
  }
}

TEST(CpuOps, LinearErrors) {
  Tensor x = randn({4, 8}, 1), w = randn({3, 7}, 2);
  Tensor out = Tensor::empty({4, 3}, DType::F32);
  EXPECT_THROW(ops::linear(x, w, nullptr, out), Error);  // K mismatch
  Tensor w2 = randn({3, 8}, 2);
  Tensor bad_out = Tensor::empty({4, 4}, DType::F32);
  EXPECT_THROW(ops::linear(x, w2, nullptr, bad_out), Error);
  Tensor bad_bias = randn({4}, 3);
  EXPECT_THROW(ops::linear(x, w2, &bad_bias, out), Error);
  Tensor xb = x.to(DType::BF16);
  EXPECT_THROW(ops::linear(xb, w2, nullptr, out), Error);  // CPU is f32 only
  Tensor undefined;
  EXPECT_THROW(ops::linear(x, w2, nullptr, undefined), Error);
  try {
    ops::linear(x, w, nullptr, out);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ops::linear"), std::string::npos) << e.what();
  }
}

TEST(CpuOps, Norms) {
  const int64_t R = 7, C = 33;
  Tensor x = randn({R, C}, 4, 3.f), w = randn({C}, 5), b = randn({C}, 6);
  Tensor sh = randn({C}, 7), sc = randn({C}, 8, 0.3f);
  auto xv = x.to_float_vector(), wv = w.to_float_vector(), bv = b.to_float_vector();
  auto shv = sh.to_float_vector(), scv = sc.to_float_vector();
  const float eps = 1e-6f;
  std::vector<double> ln(R * C), lna(R * C), mod(R * C), modr(R * C), rms(R * C);
  for (int64_t r = 0; r < R; ++r) {
    double m = 0, v = 0, ss = 0;
    for (int64_t c = 0; c < C; ++c) m += xv[r * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (xv[r * C + c] - m) * (xv[r * C + c] - m);
    v /= C;
    for (int64_t c = 0; c < C; ++c) ss += double(xv[r * C + c]) * xv[r * C + c];
    for (int64_t c = 0; c < C; ++c) {
      double n = (xv[r * C + c] - m) / std::sqrt(v + eps);
      ln[r * C + c] = n;
      lna[r * C + c] = n * wv[c] + bv[c];
      mod[r * C + c] = n * (1 + scv[c]) + shv[c];
      modr[r * C + c] = double(round_bf16(float(n))) * (1 + scv[c]) + shv[c];
      rms[r * C + c] = xv[r * C + c] / std::sqrt(ss / C + eps) * wv[c];
    }
  }
  Tensor out = Tensor::empty({R, C}, DType::F32);
  ops::layer_norm(x, nullptr, nullptr, eps, out);
  EXPECT_LT(relative_error(out, from_doubles(ln, {R, C})), 1e-6);
  ops::layer_norm(x, &w, &b, eps, out);
  EXPECT_LT(relative_error(out, from_doubles(lna, {R, C})), 1e-6);
  ops::layer_norm_modulate(x, sh, sc, eps, out);
  EXPECT_LT(relative_error(out, from_doubles(mod, {R, C})), 1e-6);
  ops::layer_norm_modulate(x, sh, sc, eps, out, true);
  EXPECT_LT(relative_error(out, from_doubles(modr, {R, C})), 1e-6);
  // the bf16 rounding is visible: differs from the unrounded result
  EXPECT_GT(relative_error(out, from_doubles(mod, {R, C})), 1e-4);
  ops::rms_norm(x, w, eps, out);
  EXPECT_LT(relative_error(out, from_doubles(rms, {R, C})), 1e-6);

  Tensor wrong = randn({C + 1}, 9);
  EXPECT_THROW(ops::layer_norm(x, &wrong, &b, eps, out), Error);
  EXPECT_THROW(ops::layer_norm(x, &w, nullptr, eps, out), Error);
  EXPECT_THROW(ops::rms_norm(x, wrong, eps, out), Error);
  EXPECT_THROW(ops::layer_norm_modulate(x, sh, wrong, eps, out), Error);
  Tensor out_bad = Tensor::empty({R, C - 1}, DType::F32);
  EXPECT_THROW(ops::rms_norm(x, w, eps, out_bad), Error);
  EXPECT_THROW(ops::layer_norm(x, nullptr, nullptr, 0.f, out), Error);
}

TEST(CpuOps, Elementwise) {
  Tensor x = randn({3, 50}, 10, 2.f), y = randn({3, 50}, 11), g = randn({50}, 12);
  auto xv = x.to_float_vector(), yv = y.to_float_vector(), gv = g.to_float_vector();
  std::vector<double> ge(150), si(150), ag(150), ap(150), ax(150);
  for (int i = 0; i < 150; ++i) {
    ge[i] = gelu_ref(xv[i]);
    si[i] = xv[i] / (1 + std::exp(-double(xv[i])));
    ag[i] = xv[i] + double(yv[i]) * gv[i % 50];
    ap[i] = xv[i] + double(yv[i]);
    ax[i] = 0.5 * xv[i] - 2.0 * yv[i];
  }
  Tensor out = Tensor::empty({3, 50}, DType::F32);
  ops::gelu_tanh(x, out);
  EXPECT_LT(relative_error(out, from_doubles(ge, {3, 50})), 1e-6);
  ops::silu(x, out);
  EXPECT_LT(relative_error(out, from_doubles(si, {3, 50})), 1e-6);
  Tensor xi = x.clone();
  ops::silu(xi, xi);  // in place
  EXPECT_LT(relative_error(xi, from_doubles(si, {3, 50})), 1e-6);
  ops::axpby(0.5f, x, -2.f, y, out);
  EXPECT_LT(relative_error(out, from_doubles(ax, {3, 50})), 1e-6);
  Tensor acc = x.clone();
  ops::add_gated_(acc, y, &g);
  EXPECT_LT(relative_error(acc, from_doubles(ag, {3, 50})), 1e-6);
  acc = x.clone();
  ops::add_gated_(acc, y, nullptr);
  EXPECT_LT(relative_error(acc, from_doubles(ap, {3, 50})), 1e-6);

  Tensor small = randn({3, 49}, 13);
  EXPECT_THROW(ops::add_gated_(acc, small, nullptr), Error);
  EXPECT_THROW(ops::axpby(1, x, 1, small, out), Error);
  Tensor bad_gate = randn({49}, 14);
  EXPECT_THROW(ops::add_gated_(acc, y, &bad_gate), Error);
  Tensor xb = x.to(DType::BF16);
  EXPECT_THROW(ops::add_gated_(xb, y, nullptr), Error);  // residual must be f32
}

TEST(CpuOps, RopeInterleavedPairsAndTableBroadcast) {
  const int64_t R = 4, L = 5, H = 3, D = 8, Rt = 2;
  Tensor x = randn({R, L, H, D}, 20);
  std::vector<float> tab(Rt * L * D / 2 * 2);
  std::mt19937 gen(21);
  std::uniform_real_distribution<float> ang(-3.f, 3.f);
  std::vector<float> theta(Rt * L * D / 2);
  for (size_t i = 0; i < theta.size(); ++i) {
    theta[i] = ang(gen);
    tab[2 * i] = std::cos(theta[i]);
    tab[2 * i + 1] = std::sin(theta[i]);
  }
  Tensor cs = Tensor::from_vector(tab, {Rt, L, D / 2, 2});
  auto xv = x.to_float_vector();
  std::vector<double> ref(xv.size());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t p = 0; p < D / 2; ++p) {
          const double t = theta[((r % Rt) * L + l) * (D / 2) + p];
          const int64_t i = ((r * L + l) * H + h) * D + 2 * p;
          ref[i] = xv[i] * std::cos(t) - xv[i + 1] * std::sin(t);
          ref[i + 1] = xv[i] * std::sin(t) + xv[i + 1] * std::cos(t);
        }
  Tensor out = Tensor::empty({R, L, H, D}, DType::F32);
  ops::rope(x, cs, out);
  EXPECT_LT(relative_error(out, from_doubles(ref, {R, L, H, D})), 1e-6);
  ops::rope(x, cs, x);  // in place
  EXPECT_LT(relative_error(x, from_doubles(ref, {R, L, H, D})), 1e-6);

  Tensor cs3 = Tensor::zeros({3, L, D / 2, 2}, DType::F32);
  EXPECT_THROW(ops::rope(x, cs3, out), Error);  // 3 does not divide 4
  Tensor x_odd = randn({R, L, H, 7}, 22);
  Tensor out_odd = Tensor::empty({R, L, H, 7}, DType::F32);
  EXPECT_THROW(ops::rope(x_odd, cs, out_odd), Error);
}

// The fused q/k op: each token row (all H heads) RMS-normalised over H·D, times w, then rotated.
TEST(CpuOps, RmsNormRopeNormalisesTheWholeRowThenRotates) {
  const int64_t R = 4, L = 3, H = 2, D = 6, Rt = 2, C = H * D;
  const float eps = 1e-6f;
  Tensor x = randn({R, L, H, D}, 30, 2.f), w = randn({C}, 31);
  std::vector<double> theta(size_t(Rt * L * D / 2));
  std::vector<float> tab(theta.size() * 2);
  std::mt19937 gen(32);
  std::uniform_real_distribution<double> ang(-3.0, 3.0);
  for (size_t i = 0; i < theta.size(); ++i) {
    theta[i] = ang(gen);
    tab[2 * i] = float(std::cos(theta[i]));
    tab[2 * i + 1] = float(std::sin(theta[i]));
  }
  Tensor cs = Tensor::from_vector(tab, {Rt, L, D / 2, 2});
  const auto xv = x.to_float_vector(), wv = w.to_float_vector();
  std::vector<double> ref(xv.size());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t l = 0; l < L; ++l) {
      const int64_t row = (r * L + l) * C;
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += double(xv[row + c]) * xv[row + c];
      const double rstd = 1.0 / std::sqrt(ss / C + eps);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t p = 0; p < D / 2; ++p) {
          const int64_t c0 = h * D + 2 * p;
          const double a = xv[row + c0] * rstd * wv[c0], b = xv[row + c0 + 1] * rstd * wv[c0 + 1];
          const double t = theta[((r % Rt) * L + l) * (D / 2) + p];
          ref[row + c0] = a * std::cos(t) - b * std::sin(t);
          ref[row + c0 + 1] = a * std::sin(t) + b * std::cos(t);
        }
    }
  Tensor out = Tensor::empty({R, L, H, D}, DType::F32);
  ops::rms_norm_rope(x, w, eps, cs, out);
  EXPECT_LT(relative_error(out, from_doubles(ref, {R, L, H, D})), 1e-6);

  EXPECT_THROW(ops::rms_norm_rope(x, w, eps, cs, x), Error);  // out aliases x
  Tensor w_head = randn({D}, 33);                              // one head's weight, not H·D
  EXPECT_THROW(ops::rms_norm_rope(x, w_head, eps, cs, out), Error);
  Tensor cs3 = Tensor::zeros({3, L, D / 2, 2}, DType::F32);  // 3 rows do not divide R = 4
  EXPECT_THROW(ops::rms_norm_rope(x, w, eps, cs3, out), Error);
  EXPECT_THROW(ops::rms_norm_rope(x, w, 0.f, cs, out), Error);
}

// The residual update + norm ops: x ends as add_gated_ leaves it, out as the norm of that x.
TEST(CpuOps, AddGatedThenNormEqualsTheOpsInSequence) {
  const int64_t R = 5, C = 24;
  const float eps = 1e-6f;
  Tensor x0 = randn({R, C}, 40), y = randn({R, C}, 41), g = randn({C}, 42);
  Tensor w = randn({C}, 43), b = randn({C}, 44), sh = randn({C}, 45, 0.3f), sc = randn({C}, 46, 0.3f);
  for (int mode = 0; mode < 2; ++mode)
    for (bool gated : {true, false}) {
      SCOPED_TRACE(testing::Message() << "mode " << mode << ", gated " << gated);
      // the reference: x + y·g and the norm from naive loops in double
      const auto xv = x0.to_float_vector(), yv = y.to_float_vector(), gv = g.to_float_vector();
      const auto wv = w.to_float_vector(), bv = b.to_float_vector(), shv = sh.to_float_vector(),
                 scv = sc.to_float_vector();
      std::vector<double> xr(xv.size()), outr(xv.size());
      for (int64_t r = 0; r < R; ++r) {
        double mean = 0, var = 0;
        for (int64_t c = 0; c < C; ++c) {
          const size_t i = size_t(r * C + c);
          xr[i] = double(xv[i]) + double(yv[i]) * (gated ? gv[size_t(c)] : 1.0);
          mean += xr[i] / C;
        }
        for (int64_t c = 0; c < C; ++c) var += (xr[size_t(r * C + c)] - mean) * (xr[size_t(r * C + c)] - mean) / C;
        for (int64_t c = 0; c < C; ++c) {
          const size_t i = size_t(r * C + c);
          const double n = (xr[i] - mean) / std::sqrt(var + eps);
          outr[i] = mode == 0 ? n * wv[size_t(c)] + bv[size_t(c)] : n * (1 + scv[size_t(c)]) + shv[size_t(c)];
        }
      }
      Tensor x = x0.clone(), out = Tensor::empty({R, C}, DType::F32);
      if (mode == 0) ops::add_gated_layer_norm_(x, y, gated ? &g : nullptr, &w, &b, eps, out);
      else ops::add_gated_layer_norm_modulate_(x, y, gated ? &g : nullptr, sh, sc, eps, out);
      EXPECT_LT(relative_error(x, from_doubles(xr, {R, C})), 1e-6);
      EXPECT_LT(relative_error(out, from_doubles(outr, {R, C})), 1e-5);
    }
  Tensor x = x0.clone(), out = Tensor::empty({R, C}, DType::F32);
  EXPECT_THROW(ops::add_gated_layer_norm_(x, y, &g, &w, nullptr, eps, out), Error);  // w without b
  EXPECT_THROW(ops::add_gated_layer_norm_(x, y, &g, &w, &b, eps, x), Error);         // out aliases x
  EXPECT_THROW(ops::add_gated_layer_norm_(x, x, &g, &w, &b, eps, out), Error);       // y aliases x
  Tensor short_gate = randn({C - 1}, 47);
  EXPECT_THROW(ops::add_gated_layer_norm_modulate_(x, y, &short_gate, sh, sc, eps, out), Error);
  Tensor xb = x0.to(DType::BF16);
  EXPECT_THROW(ops::add_gated_layer_norm_modulate_(xb, y, nullptr, sh, sc, eps, out), Error);
  EXPECT_LT(relative_error(x, x0), 1e-7);  // the refused calls left x as it was
}

namespace {
// Naive attention in double; rows past q_len are zero, keys past kv_len ignored.
std::vector<double> attention_ref(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                  const std::vector<float>* bias, const std::vector<int>* kvl,
                                  const std::vector<int>* ql) {
  const int64_t B = q.size(0), Lq = q.size(1), H = q.size(2), D = q.size(3), Lk = k.size(1);
  auto qv = q.to_float_vector(), kv = k.to_float_vector(), vv = v.to_float_vector();
  std::vector<double> out(qv.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Lq; ++i) {
        if (ql && i >= (*ql)[b]) continue;
        const int64_t nk = kvl ? (*kvl)[b] : Lk;
        if (nk == 0) continue;
        std::vector<double> s(nk);
        double mx = -1e300;
        for (int64_t j = 0; j < nk; ++j) {
          double d = 0;
          for (int64_t c = 0; c < D; ++c)
            d += double(qv[((b * Lq + i) * H + h) * D + c]) * kv[((b * Lk + j) * H + h) * D + c];
          s[j] = d * scale + (bias ? (*bias)[(h * Lq + i) * Lk + j] : 0.0);
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (int64_t c = 0; c < D; ++c) {
          double a = 0;
          for (int64_t j = 0; j < nk; ++j) a += s[j] * vv[((b * Lk + j) * H + h) * D + c];
          out[((b * Lq + i) * H + h) * D + c] = a / sum;
        }
      }
  return out;
}
}  // namespace

TEST(CpuOps, AttentionMatchesNaive) {
  // Lq, Lk not multiples of the 64/128 blocks; several key blocks.
  const int64_t B = 2, Lq = 70, Lk = 300, H = 3, D = 20;
  Tensor q = randn({B, Lq, H, D}, 30), k = randn({B, Lk, H, D}, 31), v = randn({B, Lk, H, D}, 32);
  Tensor out = Tensor::empty({B, Lq, H, D}, DType::F32);
  ops::attention(q, k, v, out);
  auto ref = attention_ref(q, k, v, 1.0 / std::sqrt(double(D)), nullptr, nullptr, nullptr);
  EXPECT_LT(relative_error(out, from_doubles(ref, {B, Lq, H, D})), 1e-5);

  // explicit scale + bias
  Tensor bias = randn({H, Lq, Lk}, 33);
  auto bv = bias.to_float_vector();
  ops::AttentionArgs a;
  a.scale = 0.37f;
  a.bias = &bias;
  ops::attention(q, k, v, out, a);
  ref = attention_ref(q, k, v, 0.37, &bv, nullptr, nullptr);
  EXPECT_LT(relative_error(out, from_doubles(ref, {B, Lq, H, D})), 1e-5);

  // kv_lens / q_lens, including a zero-length key set
  std::vector<int> kvl = {133, 0}, ql = {41, 70};
  std::vector<float> kvf(kvl.begin(), kvl.end()), qlf(ql.begin(), ql.end());
  Tensor kvt = Tensor::from_vector(kvf, {B}).to(DType::I32);
  Tensor qlt = Tensor::from_vector(qlf, {B}).to(DType::I32);
  ops::AttentionArgs a2;
  a2.kv_lens = &kvt;
  a2.q_lens = &qlt;
  out.copy_from(randn({B, Lq, H, D}, 34));  // garbage must be overwritten
  ops::attention(q, k, v, out, a2);
  ref = attention_ref(q, k, v, 1.0 / std::sqrt(double(D)), nullptr, &kvl, &ql);
  EXPECT_LT(max_abs_diff(out, from_doubles(ref, {B, Lq, H, D})), 1e-5);
}

Tensor i32(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

TEST(CpuOps, AttentionPackedSequencesEqualSeparateCalls) {
  // [B, L] rows = packed sequences of lengths {5, 0, 9, 3}: each attends only within itself.
  const int64_t B = 2, H = 2, D = 8, L = 17;
  const std::vector<int32_t> lens = {5, 0, 9, 3};
  Tensor q = randn({B, L, H, D}, 70), k = randn({B, L, H, D}, 71), v = randn({B, L, H, D}, 72);
  Tensor sl = i32(lens);
  ops::AttentionArgs a;
  a.seq_lens = &sl;
  Tensor out = Tensor::zeros({B, L, H, D}, DType::F32);
  ops::attention(q, k, v, out, a);
  Tensor want = Tensor::zeros({B, L, H, D}, DType::F32);
  for (int64_t b = 0; b < B; ++b) {
    int64_t off = 0;
    for (int32_t n : lens) {
      if (n == 0) continue;
      auto rows = [&](const Tensor& t) { return t.select(0, b).slice(0, off, off + n).unsqueeze(0).contiguous(); };
      Tensor o = Tensor::empty({1, n, H, D}, DType::F32);
      ops::attention(rows(q), rows(k), rows(v), o);
      want.select(0, b).slice(0, off, off + n).copy_from(o.select(0, 0));
      off += n;
    }
  }
  EXPECT_EQ(relative_error(out, want), 0.0);
  // A mixed-up packing differs (the boundaries matter).
  Tensor sl2 = i32({9, 5, 3, 0});
  a.seq_lens = &sl2;
  Tensor out2 = Tensor::zeros({B, L, H, D}, DType::F32);
  ops::attention(q, k, v, out2, a);
  EXPECT_GT(relative_error(out2, want), 1e-3);
  // Equal lengths take the batched path and still equal separate calls.
  Tensor sl3 = i32({4, 4, 4, 4});
  Tensor q16 = q.slice(1, 0, 16).contiguous(), k16 = k.slice(1, 0, 16).contiguous(),
         v16 = v.slice(1, 0, 16).contiguous();
  a.seq_lens = &sl3;
  Tensor o3 = Tensor::zeros({B, 16, H, D}, DType::F32);
  ops::attention(q16, k16, v16, o3, a);
  Tensor w3 = Tensor::zeros({B * 4, 4, H, D}, DType::F32);
  ops::attention(q16.view({B * 4, 4, H, D}), k16.view({B * 4, 4, H, D}), v16.view({B * 4, 4, H, D}), w3);
  EXPECT_EQ(relative_error(o3, w3.view({B, 16, H, D})), 0.0);
}

TEST(CpuOps, AttentionPackedSequencesBadInput) {
  const int64_t H = 1, D = 4;
  Tensor q = randn({1, 10, H, D}, 73);
  Tensor out = Tensor::zeros({1, 10, H, D}, DType::F32);
  auto expect_error = [&](const Tensor& sl, const char* what, const Tensor* kvl = nullptr) {
    ops::AttentionArgs a;
    a.seq_lens = &sl;
    a.kv_lens = kvl;
    try {
      ops::attention(q, q, q, out, a);
      ADD_FAILURE() << "no error for " << what;
    } catch (const osp::Error& e) {
      EXPECT_NE(std::string(e.what()).find("seq_lens"), std::string::npos) << e.what();
    }
  };
  expect_error(i32({4, 5}), "sum 9 != 10");
  expect_error(i32({12, -2}), "negative length");
  expect_error(Tensor::from_vector(std::vector<float>{5.f, 5.f}, {2}), "f32 lengths");
  Tensor kvl = i32({10});
  expect_error(i32({5, 5}), "with kv_lens", &kvl);
}

TEST(CpuOps, AttentionPortableLoopsMatchSimdKernels) {
  // Head dim 128 (the DiT's) and ragged sizes; both code paths against each other and the naive
  // reference. Where the CPU has no AVX2 both runs take the portable path.
  const int64_t B = 1, Lq = 67, Lk = 261, H = 2, D = 128;
  Tensor q = randn({B, Lq, H, D}, 60), k = randn({B, Lk, H, D}, 61), v = randn({B, Lk, H, D}, 62);
  Tensor a = Tensor::empty({B, Lq, H, D}, DType::F32), b = Tensor::empty({B, Lq, H, D}, DType::F32);
  ops::attention(q, k, v, a);
  ops::cpu::set_simd_enabled(false);
  EXPECT_FALSE(ops::cpu::simd_enabled());
  ops::attention(q, k, v, b);
  ops::cpu::set_simd_enabled(true);
  auto ref = attention_ref(q, k, v, 1.0 / std::sqrt(double(D)), nullptr, nullptr, nullptr);
  EXPECT_LT(relative_error(a, from_doubles(ref, {B, Lq, H, D})), 1e-5);
  EXPECT_LT(relative_error(b, from_doubles(ref, {B, Lq, H, D})), 1e-5);
  EXPECT_LT(relative_error(a, b), 1e-5);
}

TEST(CpuOps, AttentionErrors) {
  Tensor q = randn({1, 4, 2, 8}, 1), k = randn({1, 5, 2, 8}, 2), v = randn({1, 5, 2, 8}, 3);
  Tensor out = Tensor::empty({1, 4, 2, 8}, DType::F32);
  Tensor k_bad = randn({1, 5, 3, 8}, 4);
  EXPECT_THROW(ops::attention(q, k_bad, v, out), Error);
  Tensor v_bad = randn({1, 6, 2, 8}, 5);
  EXPECT_THROW(ops::attention(q, k, v_bad, out), Error);
  Tensor lens = Tensor::from_vector({9.f}, {1}).to(DType::I32);  // > Lk
  ops::AttentionArgs a;
  a.kv_lens = &lens;
  EXPECT_THROW(ops::attention(q, k, v, out, a), Error);
  Tensor bias_bad = randn({2, 4, 4}, 6);
  ops::AttentionArgs a2;
  a2.bias = &bias_bad;
  EXPECT_THROW(ops::attention(q, k, v, out, a2), Error);
  EXPECT_THROW(ops::attention(q, k, v, q), Error);  // out aliases q
}

TEST(CpuOps, GatherRowsAnyDtype) {
  Tensor src = randn({6, 5}, 40);
  std::vector<float> idx = {5, -1, 0, 0, 3};
  Tensor index = Tensor::from_vector(idx, {5}).to(DType::I32);
  for (DType dt : {DType::F32, DType::BF16, DType::I32}) {
    Tensor s = src.to(dt);
    Tensor out = Tensor::empty({5, 5}, dt);
    ops::gather_rows(s, index, out);
    auto sv = s.to_float_vector(), ov = out.to_float_vector();
    for (int i = 0; i < 5; ++i)
      for (int c = 0; c < 5; ++c)
        EXPECT_EQ(ov[i * 5 + c], idx[i] < 0 ? 0.f : sv[int(idx[i]) * 5 + c]);
  }
  Tensor out = Tensor::empty({5, 5}, DType::F32);
  Tensor bad = Tensor::from_vector({6.f, 0, 0, 0, 0}, {5}).to(DType::I32);
  EXPECT_THROW(ops::gather_rows(src, bad, out), Error);  // out of range
  Tensor fidx = Tensor::from_vector(idx, {5});
  EXPECT_THROW(ops::gather_rows(src, fidx, out), Error);  // index must be i32
  Tensor out_bf = Tensor::empty({5, 5}, DType::BF16);
  EXPECT_THROW(ops::gather_rows(src, index, out_bf), Error);  // dtype mismatch
}

TEST(CpuOps, PatchifyUnpatchify) {
  const int64_t C = 3, T = 2, H = 4, W = 6;
  Tensor z = randn({C, T, H, W}, 50);
  auto zv = z.to_float_vector();
  const int64_t hh = 2, ww = 3, N = T * hh * ww, K = C * 4;
  Tensor p = Tensor::empty({N, K}, DType::F32);
  ops::patchify(z, 1, 2, 2, p);
  // wan-spec §2.3: token n = f·hh·ww + i·ww + j, K index (c, q, r) with c slowest
  for (int64_t f = 0; f < T; ++f)
    for (int64_t i = 0; i < hh; ++i)
      for (int64_t j = 0; j < ww; ++j)
        for (int64_t c = 0; c < C; ++c)
          for (int q = 0; q < 2; ++q)
            for (int r = 0; r < 2; ++r)
              EXPECT_EQ(p.item({(f * hh + i) * ww + j, c * 4 + q * 2 + r}),
                        zv[((c * T + f) * H + 2 * i + q) * W + 2 * j + r]);
  // head output is ordered (q, r, c), c fastest
  Tensor y = randn({N, 4 * C}, 51);
  Tensor v = Tensor::empty({C, T, H, W}, DType::F32);
  ops::unpatchify(y, T, hh, ww, 1, 2, 2, v);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t f = 0; f < T; ++f)
      for (int64_t i = 0; i < hh; ++i)
        for (int64_t j = 0; j < ww; ++j)
          for (int q = 0; q < 2; ++q)
            for (int r = 0; r < 2; ++r)
              EXPECT_EQ(v.item({c, f, 2 * i + q, 2 * j + r}),
                        y.item({(f * hh + i) * ww + j, (q * 2 + r) * C + c}));
  Tensor z_odd = randn({C, T, 5, W}, 52);
  EXPECT_THROW(ops::patchify(z_odd, 1, 2, 2, p), Error);
  EXPECT_THROW(ops::patchify(z, 2, 2, 2, p), Error);
  Tensor v_bad = Tensor::empty({C, T, H, W + 2}, DType::F32);
  EXPECT_THROW(ops::unpatchify(y, T, hh, ww, 1, 2, 2, v_bad), Error);
}

TEST(CpuOps, CudaTensorWithoutCudaBuildIsAClearError) {
#ifndef OSP_HAVE_CUDA
  // Tensors cannot even be created on CUDA in a CPU build; the dispatcher never sees one.
  EXPECT_THROW(Tensor::empty({2}, DType::F32, Device::cuda(0)), Error);
#else
  GTEST_SKIP() << "CUDA build: covered by the backend-parity gpu tests";
#endif
}
