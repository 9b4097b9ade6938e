// FP8 E4M3 path on the CPU: E4M3 conversion, exactly which HiF8 values E4M3 cannot hold,
// HiF8→E4M3 operand quantization, and how far the FP8 GEMM is from the HiF8 fake-quant GEMM.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "osp/core/philox.h"
#include "osp/quant/fp8.h"
#include "osp/quant/hif8.h"
#include "osp/quant/hif8_linear.h"
#include "test_util.h"

using namespace osp;
using namespace osp::quant;

namespace {
float p2(int e) { return std::ldexp(1.0f, e); }
double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0, r = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    e += double(a[i] - b[i]) * (a[i] - b[i]);
    r += double(b[i]) * b[i];
  }
  return std::sqrt(e / r);
}
}  // namespace

TEST(Fp8E4M3, MatchesCoreConversion) {
  for (int c = 0; c < 256; ++c) {
    float v = e4m3_decode(uint8_t(c));
    float w = e4m3_to_f32(uint8_t(c));
    if (std::isnan(w)) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    EXPECT_EQ(v, w) << "code " << c;
    EXPECT_EQ(e4m3_encode(v), uint8_t(c)) << "code " << c;
  }
  // midpoints (ties to even), out of range, tiny, random
  std::vector<float> xs = {448.f, 449.f, 464.f, 1e9f, INFINITY, -INFINITY, p2(-10), 1.5f * p2(-10),
                           p2(-11), 3.0f * p2(-10), 5.0f * p2(-10), 1e-30f, -0.0f, 0.0f};
  for (int c = 0; c < 0x7e; ++c) {
    float a = e4m3_to_f32(uint8_t(c)), b = e4m3_to_f32(uint8_t(c + 1));
    xs.push_back(0.5f * (a + b));
    xs.push_back(std::nextafter(0.5f * (a + b), 0.0f));
    xs.push_back(std::nextafter(0.5f * (a + b), 1000.0f));
    xs.push_back(-0.5f * (a + b));
  }
  Tensor r = randn({4000}, 17);
  for (int i = 0; i < 4000; ++i) xs.push_back(r.data<float>()[i] * p2(i % 24 - 12));
  for (float x : xs) EXPECT_EQ(e4m3_encode(x), f32_to_e4m3(x)) << "x = " << x;
  EXPECT_EQ(e4m3_encode(NAN) & 0x7f, 0x7f);
}

// The exact set of HiF8 values that E4M3 cannot represent (documented in fp8.h):
// 0 < |v| < 2^-8 except ±2^-9, and |v| > 448.
TEST(Fp8E4M3, WhichHiF8ValuesAreNotE4M3) {
  int not_exact_small = 0;
  std::printf("HiF8 values (positive) not exactly representable in E4M3, and their E4M3 rounding:\n");
  for (int c = 1; c < 128; ++c) {
    float v = hif8_decode(uint8_t(c));
    if (!std::isfinite(v)) continue;
    bool exact = is_e4m3_exact(v);
    bool expect_exact = v <= 448.0f && (v >= p2(-8) || v == p2(-9));
    EXPECT_EQ(exact, expect_exact) << "HiF8 code " << c << " value " << v;
    EXPECT_EQ(is_e4m3_exact(-v), exact);
    if (!exact && v < 1.0f) {
      ++not_exact_small;
      std::printf("  0x%02X %.9g -> %.9g\n", c, double(v), double(e4m3_decode(e4m3_encode(v))));
    }
  }
  EXPECT_EQ(not_exact_small, 20);  // 1.5·2^-9, the twelve of 2^-10..1.5·2^-15, seven denormals
  // where they go (round to nearest even in E4M3's subnormal grid m·2^-9)
  EXPECT_EQ(e4m3_decode(e4m3_encode(1.5f * p2(-9))), p2(-8));
  EXPECT_EQ(e4m3_decode(e4m3_encode(1.5f * p2(-10))), p2(-9));
  EXPECT_EQ(e4m3_decode(e4m3_encode(p2(-10))), 0.0f);
  EXPECT_EQ(e4m3_decode(e4m3_encode(p2(-16))), 0.0f);
  // all HiF8 values of the scaled ranges' upper part are exact, up to 224 and beyond
  for (float v : {15.f, 14.f, 0.125f, p2(-8), 1.5f * p2(-8), 224.f, 384.f}) EXPECT_TRUE(is_e4m3_exact(v)) << v;
}

TEST(Fp8E4M3, QuantizeEqualsHiF8ValueExceptTiny) {
  for (DType dt : {DType::F32, DType::BF16})
    for (float smax : {kHiF8ForwardMax, kHiF8BackwardMax}) {
      Tensor x32 = randn({50, 40}, 31);
      std::vector<float> v = x32.to_float_vector();
      for (size_t i = 0; i < v.size(); i += 5) v[i] *= 1e-3f;
      Tensor x = Tensor::from_vector(v, {50, 40}).to(dt);
      Fp8Tensor q = hif8_quantize_e4m3(x, smax);
      ASSERT_EQ(q.codes.dtype(), DType::F8E4M3);
      const float s = hif8_scale_for(amax(x), smax, dt);
      EXPECT_EQ(q.scale_inv.data<float>()[0], 1.0f / s);
      std::vector<float> xv = x.to_float_vector();
      int tiny = 0;
      std::vector<float> fq(xv.size());  // HiF8 fake-quant value h/s before any bf16 rounding
      for (size_t i = 0; i < xv.size(); ++i) {
        float xs = dt == DType::BF16 ? round_bf16(xv[i] * s) : xv[i] * s;
        float h = hif8_round(xs);
        fq[i] = h / s;
        float e = e4m3_decode(q.codes.data<uint8_t>()[i]);
        if (std::fabs(h) >= p2(-8) || std::fabs(h) == p2(-9) || h == 0) {
          ASSERT_EQ(e, h) << i;
        } else {
          ++tiny;
          EXPECT_LE(std::fabs(e - h), p2(-9));
        }
      }
      EXPECT_GT(tiny, 0) << "the test data should reach below 2^-8 after scaling";
      // dequantization gives the fake-quant values except on the tiny elements
      Tensor dq = Tensor::empty(x.shape(), DType::F32);
      fp8_dequantize(q, dq);
      double r = rel(dq.to_float_vector(), fq);
      EXPECT_LT(r, 1e-3) << "tiny elements: " << tiny;
      EXPECT_GT(r, 0.0);
    }
}

// How far the FP8 E4M3 GEMM is from the exact HiF8 fake-quant linear (CPU emulation of both).
TEST(Fp8Linear, DistanceFromHiF8FakeQuantLinear) {
  const int M = 64, K = 96, N = 48;
  struct Case {
    const char* name;
    float tiny_scale;  // every 4th activation scaled by this (heavier tail → more tiny values)
    double bound;
  };
  for (Case c : {Case{"gaussian", 1.0f, 1e-5}, Case{"heavy-tailed", 1e-3f, 1e-3}}) {
    Tensor xr = randn({M, K}, 41);
    std::vector<float> xv = xr.to_float_vector();
    for (size_t i = 0; i < xv.size(); i += 4) xv[i] *= c.tiny_scale;
    Tensor x = Tensor::from_vector(xv, {M, K});
    Tensor w = randn({N, K}, 42);
    Tensor b = randn({N}, 43);
    Tensor ref = Tensor::empty({M, N}, DType::F32), got = Tensor::empty({M, N}, DType::F32);
    hif8_linear(x, w, &b, ref);
    fp8_linear(x, w, &b, got);
    double r = relative_error(got, ref);
    std::printf("fp8_linear vs HiF8 fake-quant linear (%s): relative error %.3g\n", c.name, r);
    RecordProperty(std::string("rel_err_") + c.name, std::to_string(r));
    EXPECT_LT(r, c.bound) << c.name;
  }
}

TEST(Fp8Linear, LeadingDimsAndNoBias) {
  Tensor x = randn({2, 3, 32}, 51);
  Tensor w = randn({16, 32}, 52);
  Tensor out = Tensor::empty({2, 3, 16}, DType::F32);
  fp8_linear(x, w, nullptr, out);
  Tensor ref = Tensor::empty({2, 3, 16}, DType::F32);
  hif8_linear(x, w, nullptr, ref);
  EXPECT_LT(relative_error(out, ref), 1e-5);
}

TEST(Fp8Linear, BadArguments) {
  Tensor x = randn({4, 32}, 1);
  Tensor w = randn({8, 16}, 2);
  Tensor out = Tensor::empty({4, 8}, DType::F32);
  EXPECT_THROW(fp8_linear(x, w, nullptr, out), Error);  // K mismatch
  Tensor w2 = randn({8, 32}, 3);
  Tensor bad_out = Tensor::empty({4, 9}, DType::F32);
  EXPECT_THROW(fp8_linear(x, w2, nullptr, bad_out), Error);
  Tensor bad_bias = randn({7}, 4);
  EXPECT_THROW(fp8_linear(x, w2, &bad_bias, out), Error);
  EXPECT_THROW(hif8_quantize_e4m3(x, 1000.0f), Error);  // beyond E4M3's 448
  Fp8Tensor empty;
  Fp8Tensor wq = hif8_quantize_e4m3(w2);
  EXPECT_THROW(fp8_linear(empty, wq, nullptr, out), Error);
  Tensor bf_out = Tensor::empty({4, 8}, DType::BF16);
  EXPECT_THROW(fp8_linear(x, w2, nullptr, bf_out), Error);  // CPU reference is f32 out
}

TEST(Fp8E4M3, FromHiF8CodesEqualsQuantizeFromFloats) {
  Tensor w = randn({24, 48}, 61).to(DType::BF16);
  const float s = hif8_scale_for(amax(w), kHiF8ForwardMax, DType::BF16);
  // the codes a HiF8 checkpoint stores for w
  std::vector<float> wv = w.to_float_vector();
  Tensor codes = Tensor::empty({24, 48}, DType::U8);
  for (size_t i = 0; i < wv.size(); ++i) codes.data<uint8_t>()[i] = hif8_encode(round_bf16(wv[i] * s));
  Fp8Tensor a = fp8_from_hif8_codes(codes, s);
  Fp8Tensor b = hif8_quantize_e4m3(w);
  ASSERT_EQ(a.codes.dtype(), DType::F8E4M3);
  EXPECT_EQ(std::memcmp(a.codes.raw(), b.codes.raw(), b.codes.nbytes()), 0);
  EXPECT_EQ(a.scale_inv.data<float>()[0], b.scale_inv.data<float>()[0]);
  Tensor big_codes = Tensor::empty({1}, DType::U8);
  big_codes.data<uint8_t>()[0] = hif8_encode(1024.0f);  // beyond E4M3's 448
  EXPECT_THROW(fp8_from_hif8_codes(big_codes, 1.0f), Error);
  EXPECT_THROW(fp8_from_hif8_codes(codes, 0.0f), Error);
}

TEST(Fp8Linear, ActivationEqualsSeparateOp) {
  Tensor x = randn({6, 32}, 71), w = randn({16, 32}, 72), b = randn({16}, 73);
  Fp8Tensor xq = hif8_quantize_e4m3(x), wq = hif8_quantize_e4m3(w);
  Tensor plain = Tensor::empty({6, 16}, DType::F32);
  fp8_linear(xq, wq, &b, plain);
  for (ops::Act act : {ops::Act::GeluTanh, ops::Act::Silu}) {
    Tensor got = Tensor::empty({6, 16}, DType::F32), want = Tensor::empty({6, 16}, DType::F32);
    fp8_linear(xq, wq, &b, got, {}, act);
    if (act == ops::Act::GeluTanh) ops::gelu_tanh(plain, want);
    else ops::silu(plain, want);
    EXPECT_EQ(max_abs_diff(got, want), 0.0);
    EXPECT_GT(max_abs_diff(got, plain), 1e-3);
  }
}
