// Per-tensor scaled fake quantization Q_s (forward 15, backward 224) and the HiF8 linear layer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "osp/core/philox.h"
#include "osp/quant/hif8.h"
#include "osp/quant/hif8_linear.h"
#include "test_util.h"

using namespace osp;
using namespace osp::quant;

namespace {
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// Independent restatement of Q_s for f32 (spec §1.10): s = smax / amax, HiF8(x·s) / s.
std::vector<float> expected_f32(const std::vector<float>& x, float smax) {
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  float s = smax / std::max(amax, 1e-8f);
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = hif8_round(x[i] * s) / s;
  return r;
}
}  // namespace

TEST(HiF8FakeQuant, ForwardScaleMapsAmaxTo15) {
  std::vector<float> v = {3.0f, -1.5f, 0.7f, 0.001f, -3.0f, 2.9f, 1e-9f, 0.0f};
  Tensor x = Tensor::from_vector(v, {2, 4});
  Tensor y = hif8_fake_quant(x);
  // s = 5: 3 → 15 (exact, 0x2F) → 3; 2.9 → 14.5 → tie → 15 → 3; 0.7 → 3.5 → 0.7
  EXPECT_EQ(y.data<float>()[0], 3.0f);
  EXPECT_EQ(y.data<float>()[4], -3.0f);
  EXPECT_EQ(y.data<float>()[5], 3.0f);
  EXPECT_EQ(y.data<float>()[1], -1.5f);
  EXPECT_EQ(y.data<float>()[6], 0.0f);  // 5e-9 < 2^-23: flushed
  std::vector<float> e = expected_f32(v, 15.f);
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(bits(y.data<float>()[i]), bits(e[i])) << i;
  EXPECT_FLOAT_EQ(hif8_scale_for(3.0f, 15.f, DType::F32), 5.0f);
  EXPECT_FLOAT_EQ(amax(x), 3.0f);
}

TEST(HiF8FakeQuant, MatchesRestatementOnRandomTensors) {
  for (float smax : {kHiF8ForwardMax, kHiF8BackwardMax}) {
    Tensor x = randn({37, 53}, 7);
    std::vector<float> v = x.to_float_vector();
    for (size_t i = 0; i < v.size(); i += 7) v[i] *= 1e-4f;  // spread over many binades
    x = Tensor::from_vector(v, {37, 53});
    Tensor y = Tensor::empty(x.shape(), DType::F32);
    hif8_fake_quant(x, y, smax);
    std::vector<float> e = expected_f32(v, smax);
    for (size_t i = 0; i < v.size(); ++i)
      ASSERT_EQ(bits(y.data<float>()[i]), bits(e[i])) << "smax " << smax << " element " << i;
    // every output times s is a HiF8 value, and the 3-bit band holds for |x·s| ≥ 1/8
    float s = hif8_scale_for(amax(x), smax, DType::F32);
    double err2 = 0, ref2 = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      float q = hif8_round(v[i] * s);
      EXPECT_EQ(hif8_round(q), q);
      err2 += double(y.data<float>()[i] - v[i]) * (y.data<float>()[i] - v[i]);
      ref2 += double(v[i]) * v[i];
    }
    // relative error of 3-bit (forward) or 2-bit (backward top band) rounding
    EXPECT_LT(std::sqrt(err2 / ref2), smax == 15.f ? 0.04 : 0.08);
    EXPECT_GT(std::sqrt(err2 / ref2), 0.001);  // it does quantize
  }
}

TEST(HiF8FakeQuant, AmaxZeroGivesInput) {
  Tensor x = Tensor::zeros({3, 5}, DType::F32);
  Tensor y = hif8_fake_quant(x);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(bits(y.data<float>()[i]), 0u);
  Tensor xb = Tensor::zeros({4}, DType::BF16);
  Tensor yb = hif8_fake_quant(xb, kHiF8BackwardMax);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(yb.data<uint16_t>()[i], 0u);
  EXPECT_EQ(amax(x), 0.0f);
}

TEST(HiF8FakeQuant, NaNIgnoredByAmaxAndInfFallsBackToUnscaled) {
  Tensor x = Tensor::from_vector({NAN, 2.0f, -1.0f, 0.3f}, {4});
  Tensor y = hif8_fake_quant(x);
  EXPECT_TRUE(std::isnan(y.data<float>()[0]));
  EXPECT_EQ(y.data<float>()[1], 2.0f);  // amax 2 → 15 → 2
  EXPECT_EQ(amax(x), 2.0f);
  Tensor xi = Tensor::from_vector({INFINITY, 1.0625f, -50000.f}, {3});
  Tensor yi = hif8_fake_quant(xi);
  EXPECT_EQ(yi.data<float>()[0], INFINITY);
  EXPECT_EQ(yi.data<float>()[1], 1.125f);  // s = 1: plain HiF8
  EXPECT_EQ(yi.data<float>()[2], -INFINITY);
  EXPECT_EQ(hif8_scale_for(INFINITY, 15.f, DType::F32), 1.0f);
}

TEST(HiF8FakeQuant, BF16FollowsReferenceNumerics) {
  Tensor x32 = randn({64, 33}, 11);
  Tensor x = x32.to(DType::BF16);
  Tensor y = hif8_fake_quant(x);
  ASSERT_EQ(y.dtype(), DType::BF16);
  std::vector<float> v = x.to_float_vector();
  float am = 0;
  for (float f : v) am = std::max(am, std::fabs(f));
  float s = round_bf16(15.0f / am);  // bf16 scale
  EXPECT_EQ(hif8_scale_for(am, 15.f, DType::BF16), s);
  std::vector<float> got = y.to_float_vector();
  for (size_t i = 0; i < v.size(); ++i) {
    float xs = round_bf16(v[i] * s);
    float want = round_bf16(hif8_round(xs) / s);
    ASSERT_EQ(bits(got[i]), bits(want)) << i;
  }
  // bf16 in, f32 out keeps the bf16 numerics (value then widened)
  Tensor y32 = Tensor::empty(x.shape(), DType::F32);
  hif8_fake_quant(x, y32);
  std::vector<float> g32 = y32.to_float_vector();
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(bits(g32[i]), bits(got[i])) << i;
}

TEST(HiF8FakeQuant, InPlaceAndStrided) {
  Tensor x = randn({8, 12}, 3);
  Tensor ref = hif8_fake_quant(x);
  Tensor x2 = x.clone();
  hif8_fake_quant(x2, x2);
  for (int64_t i = 0; i < x.numel(); ++i)
    EXPECT_EQ(bits(x2.data<float>()[i]), bits(ref.data<float>()[i]));
  Tensor xt = x.transpose(0, 1);  // strided input, contiguous output
  Tensor yt = Tensor::empty(xt.shape(), DType::F32);
  hif8_fake_quant(xt, yt);
  for (int i = 0; i < 12; ++i)
    for (int j = 0; j < 8; ++j)
      EXPECT_EQ(bits(yt.data<float>()[i * 8 + j]), bits(ref.data<float>()[j * 12 + i]));
}

TEST(HiF8FakeQuant, BadArguments) {
  Tensor x = Tensor::zeros({4}, DType::F32);
  Tensor o = Tensor::zeros({4}, DType::F32);
  EXPECT_THROW(hif8_fake_quant(x, o, 0.0f), Error);
  EXPECT_THROW(hif8_fake_quant(x, o, -15.0f), Error);
  EXPECT_THROW(hif8_fake_quant(x, o, NAN), Error);
  EXPECT_THROW(hif8_fake_quant(x, o, 1e6f), Error);
  Tensor o3 = Tensor::zeros({3}, DType::F32);
  EXPECT_THROW(hif8_fake_quant(x, o3), Error);
  Tensor i64 = Tensor::zeros({4}, DType::I64);
  EXPECT_THROW(hif8_fake_quant(i64, o), Error);
  EXPECT_THROW(amax(i64), Error);
}

// The HiF8 linear layer's output equals the float GEMM of the fake-quantized operands,
// computed here independently (scalar restatement + double accumulation).
TEST(HiF8Linear, EqualsGemmOfFakeQuantizedOperands) {
  const int M = 9, K = 40, N = 13;
  Tensor x = randn({M, K}, 21);
  Tensor w = randn({N, K}, 22);
  std::vector<float> wv = w.to_float_vector();
  for (auto& f : wv) f *= 0.05f;
  w = Tensor::from_vector(wv, {N, K});
  Tensor b = randn({N}, 23);
  Tensor out = Tensor::empty({M, N}, DType::F32);
  Tensor xq = Tensor::empty({M, K}, DType::F32), wq = Tensor::empty({N, K}, DType::F32);
  hif8_linear(x, w, &b, out, ops::Act::None, &xq, &wq);
  std::vector<float> xe = expected_f32(x.to_float_vector(), 15.f);
  std::vector<float> we = expected_f32(wv, 15.f);
  for (int i = 0; i < M * K; ++i) ASSERT_EQ(bits(xq.data<float>()[i]), bits(xe[size_t(i)]));
  for (int i = 0; i < N * K; ++i) ASSERT_EQ(bits(wq.data<float>()[i]), bits(we[size_t(i)]));
  double err2 = 0, ref2 = 0, unq_err2 = 0;
  std::vector<float> xv = x.to_float_vector();
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = b.data<float>()[n], acc_unq = acc;
      for (int k = 0; k < K; ++k) {
        acc += double(xe[size_t(m * K + k)]) * we[size_t(n * K + k)];
        acc_unq += double(xv[size_t(m * K + k)]) * wv[size_t(n * K + k)];
      }
      double d = out.data<float>()[m * N + n] - acc;
      err2 += d * d;
      ref2 += acc * acc;
      unq_err2 += (acc_unq - acc) * (acc_unq - acc);
    }
  EXPECT_LT(std::sqrt(err2 / ref2), 1e-6);
  // and the quantization is visible against the unquantized GEMM
  EXPECT_GT(std::sqrt(unq_err2 / ref2), 1e-4);
}
