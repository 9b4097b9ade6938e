// HiF8 scalar and tensor codec: the spec's code table and TA vectors, all-256 round trip,
// specials (NaN, ±Inf, ±0), overflow/underflow thresholds, denormals, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "osp/quant/hif8.h"
#include "osp/quant/philox.h"
#include "test_util.h"

using namespace osp;
using namespace osp::quant;

namespace {
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float p2(int e) { return std::ldexp(1.0f, e); }
}  // namespace

// Spec §1.8 table of all 128 positive codes, written out from the spec (not computed).
TEST(HiF8Codec, DecodeMatchesSpecTable) {
  const float t[128] = {
      0, p2(-22), p2(-21), p2(-20), p2(-19), p2(-18), p2(-17), p2(-16),
      1, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875,
      2, 2.25, 2.5, 2.75, 3, 3.25, 3.5, 3.75,
      0.5, 0.5625, 0.625, 0.6875, 0.75, 0.8125, 0.875, 0.9375,
      4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5,
      8, 9, 10, 11, 12, 13, 14, 15,
      0.25, 0.28125, 0.3125, 0.34375, 0.375, 0.40625, 0.4375, 0.46875,
      0.125, 0.140625, 0.15625, 0.171875, 0.1875, 0.203125, 0.21875, 0.234375,
      16, 20, 24, 28, 32, 40, 48, 56,
      64, 80, 96, 112, 128, 160, 192, 224,
      0.0625, 0.078125, 0.09375, 0.109375, 0.03125, 0.0390625, 0.046875, 0.0546875,
      0.015625, 0.01953125, 0.0234375, 0.02734375, p2(-7), 1.25f * p2(-7), 1.5f * p2(-7), 1.75f * p2(-7),
      256, 384, 512, 768, 1024, 1536, 2048, 3072,
      4096, 6144, 8192, 12288, 16384, 24576, 32768, INFINITY,
      p2(-8), 1.5f * p2(-8), p2(-9), 1.5f * p2(-9), p2(-10), 1.5f * p2(-10), p2(-11), 1.5f * p2(-11),
      p2(-12), 1.5f * p2(-12), p2(-13), 1.5f * p2(-13), p2(-14), 1.5f * p2(-14), p2(-15), 1.5f * p2(-15)};
  for (int c = 0; c < 128; ++c) {
    EXPECT_EQ(bits(hif8_decode(uint8_t(c))), bits(t[c])) << "code 0x" << std::hex << c;
    if (c == 0) continue;
    if (c == 0x6F) {
      EXPECT_EQ(hif8_decode(0xEF), -INFINITY);
      continue;
    }
    EXPECT_EQ(bits(hif8_decode(uint8_t(c | 0x80))), bits(-t[c])) << "code 0x" << std::hex << (c | 0x80);
  }
  EXPECT_TRUE(std::isnan(hif8_decode(0x80)));
  // the table pointer agrees with the function
  for (int c = 0; c < 256; ++c)
    if (c != 0x80) EXPECT_EQ(bits(hif8_decode_table()[c]), bits(hif8_decode(uint8_t(c))));
}

TEST(HiF8Codec, AllCodesRoundTrip) {
  int finite_nonzero = 0;
  for (int c = 0; c < 256; ++c) {
    float v = hif8_decode(uint8_t(c));
    if (c == 0x80) {  // NaN: canonical NaN code
      EXPECT_EQ(hif8_encode(v), 0x80);
      continue;
    }
    EXPECT_EQ(hif8_encode(v), uint8_t(c)) << "code 0x" << std::hex << c << " value " << v;
    if (std::isfinite(v) && v != 0) ++finite_nonzero;
  }
  EXPECT_EQ(finite_nonzero, 252);
  // −0 is not a code: it maps to the single zero 0x00.
  EXPECT_EQ(hif8_encode(-0.0f), 0x00);
}

// Spec §1.8 "TA test vectors" and osp-next-spec §5.4 worked examples.
TEST(HiF8Codec, TAVectors) {
  struct V {
    float in;
    uint8_t code;
    float value;
  };
  const V vs[] = {
      {1.0625f, 0x09, 1.125f},    {1.0624f, 0x08, 1.0f},     {-1.0625f, 0x89, -1.125f},
      {0.3f, 0x32, 0.3125f},      {15.9f, 0x40, 16.0f},      {17.9f, 0x40, 16.0f},
      {18.0f, 0x41, 20.0f},       {100.0f, 0x4A, 96.0f},     {255.0f, 0x60, 256.0f},
      {1000.0f, 0x64, 1024.0f},   {40959.0f, 0x6E, 32768.0f}, {1.5f * p2(-17), 0x07, p2(-16)},
      {1.49f * p2(-17), 0x06, p2(-17)}, {1.6f * p2(-16), 0x7E, p2(-15)}, {p2(-23), 0x01, p2(-22)},
      {0.12f, 0x38, 0.125f},      {-5.3f, 0xA3, -5.5f},      {7.9f, 0x28, 8.0f},
      {8.5f, 0x29, 9.0f},         {15.0f, 0x2F, 15.0f},      {15.5f, 0x40, 16.0f},
      {224.0f, 0x4F, 224.0f},     {40000.0f, 0x6E, 32768.0f}, {0.0029f, 0x73, 0.0029296875f},
      {1e-5f, 0x06, 7.62939453125e-6f}, {3e-7f, 0x01, p2(-22)}, {1.5e-7f, 0x01, p2(-22)},
  };
  for (const V& v : vs) {
    EXPECT_EQ(hif8_encode(v.in), v.code) << "input " << v.in;
    EXPECT_EQ(bits(hif8_round(v.in)), bits(v.value)) << "input " << v.in;
  }
}

TEST(HiF8Codec, NaN) {
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  float snan_neg;
  uint32_t u = 0xff800001u;  // negative signalling NaN
  std::memcpy(&snan_neg, &u, 4);
  EXPECT_EQ(hif8_encode(qnan), 0x80);
  EXPECT_EQ(hif8_encode(-qnan), 0x80);
  EXPECT_EQ(hif8_encode(snan_neg), 0x80);
  EXPECT_EQ(hif8_encode(qnan, /*saturate=*/true), 0x80);
  EXPECT_TRUE(std::isnan(hif8_round(qnan)));
}

TEST(HiF8Codec, Infinity) {
  EXPECT_EQ(hif8_encode(INFINITY), 0x6F);
  EXPECT_EQ(hif8_encode(-INFINITY), 0xEF);
  EXPECT_EQ(hif8_encode(INFINITY, true), 0x6E);
  EXPECT_EQ(hif8_encode(-INFINITY, true), 0xEE);
  EXPECT_EQ(hif8_round(INFINITY), INFINITY);
  EXPECT_EQ(hif8_round(-INFINITY), -INFINITY);
  EXPECT_EQ(hif8_round(-INFINITY, true), -32768.0f);
}

TEST(HiF8Codec, SignedZero) {
  EXPECT_EQ(hif8_encode(0.0f), 0x00);
  EXPECT_EQ(hif8_encode(-0.0f), 0x00);
  EXPECT_EQ(bits(hif8_round(-0.0f)), 0u);  // +0, the sign of zero is not kept
  EXPECT_EQ(bits(hif8_decode(0x00)), 0u);
}

TEST(HiF8Codec, OverflowThreshold) {
  const float thr = 40960.0f;
  const float below = std::nextafter(thr, 0.0f);
  EXPECT_EQ(hif8_encode(thr), 0x6F);
  EXPECT_EQ(hif8_encode(-thr), 0xEF);
  EXPECT_EQ(hif8_encode(thr, true), 0x6E);
  EXPECT_EQ(hif8_encode(-thr, true), 0xEE);
  EXPECT_EQ(hif8_encode(below), 0x6E);
  EXPECT_EQ(hif8_round(below), 32768.0f);
  EXPECT_EQ(hif8_round(-below), -32768.0f);
  EXPECT_EQ(hif8_encode(-50000.0f), 0xEF);
  EXPECT_EQ(hif8_encode(-50000.0f, true), 0xEE);
  EXPECT_EQ(hif8_encode(3e38f), 0x6F);
  // 32768 exact and values between the top two codes
  EXPECT_EQ(hif8_round(32768.0f), 32768.0f);
  EXPECT_EQ(hif8_round(28672.0f), 32768.0f);  // tie 24576↔32768 → away
  EXPECT_EQ(hif8_round(28671.0f), 24576.0f);
}

TEST(HiF8Codec, UnderflowThreshold) {
  const float m = p2(-23);
  EXPECT_EQ(hif8_encode(m), 0x01);
  EXPECT_EQ(hif8_encode(-m), 0x81);
  EXPECT_EQ(hif8_encode(std::nextafter(m, 0.0f)), 0x00);
  EXPECT_EQ(hif8_encode(-std::nextafter(m, 0.0f)), 0x00);  // no −0
  EXPECT_EQ(hif8_encode(0.99f * m), 0x00);
  EXPECT_EQ(hif8_encode(std::nextafter(p2(-22), 0.0f)), 0x01);  // [2^-23, 2^-22) → 2^-22
  EXPECT_EQ(hif8_encode(1e-7f), 0x00);
  EXPECT_EQ(hif8_encode(std::numeric_limits<float>::denorm_min()), 0x00);  // fp32 subnormal
  EXPECT_EQ(hif8_encode(-1e-40f), 0x00);
}

// The denormal (DML) band: powers of two 2^-22..2^-16, linear rounding between neighbours,
// and the carry from the top denormal into the smallest normal.
TEST(HiF8Codec, SubnormalRange) {
  for (int k = 1; k <= 7; ++k) {
    float v = p2(k - 23);
    EXPECT_EQ(hif8_encode(v), uint8_t(k)) << "2^" << (k - 23);
    EXPECT_EQ(hif8_encode(-v), uint8_t(0x80 | k));
    if (k < 7) {
      float mid = 1.5f * v;  // linear midpoint between 2^E and 2^(E+1): tie → up
      EXPECT_EQ(hif8_encode(mid), uint8_t(k + 1));
      EXPECT_EQ(hif8_encode(std::nextafter(mid, 0.0f)), uint8_t(k));
    }
  }
  EXPECT_EQ(hif8_encode(1.5f * p2(-16)), 0x7E);  // carry DML → smallest normal 2^-15
  EXPECT_EQ(hif8_encode(std::nextafter(1.5f * p2(-16), 0.0f)), 0x07);
  EXPECT_EQ(hif8_encode(p2(-15)), 0x7E);
  EXPECT_EQ(hif8_encode(1.25f * p2(-15)), 0x7F);  // tie 2^-15 ↔ 1.5·2^-15 → away
}

// Brute force: TA encode equals "nearest finite code value, ties to larger magnitude" over a
// log-uniform sweep, for values inside the finite range.
TEST(HiF8Codec, EqualsNearestValueSearch) {
  std::vector<double> vals;
  for (int c = 0; c < 128; ++c)
    if (c != 0x6F) vals.push_back(double(hif8_decode(uint8_t(c))));
  uint64_t state = 12345;
  for (int i = 0; i < 100000; ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    double u = double(state >> 11) / double(1ULL << 53);
    float x = float(std::exp2(-23.0 + u * (15.3 + 23.0)));  // [2^-23, 2^15.3) < 40960
    double best = 0;
    double bd = 1e300;
    for (double v : vals) {
      double d = std::fabs(v - double(x));
      if (d < bd || (d == bd && v > best)) bd = d, best = v;
    }
    ASSERT_EQ(double(hif8_round(x)), best) << "x = " << x;
    ASSERT_EQ(double(hif8_round(-x)), -best) << "x = " << -x;
  }
}

TEST(HiF8Codec, TensorEncodeDecodeCPU) {
  std::vector<float> v = {0.f, -0.f, 1.0625f, -5.3f, 40960.f, -INFINITY, NAN, 1e-5f, 2e-8f};
  Tensor x = Tensor::from_vector(v, {3, 3});
  Tensor c = hif8_encode(x);
  EXPECT_EQ(c.dtype(), DType::HiF8);
  EXPECT_EQ(c.shape(), (Shape{3, 3}));
  const uint8_t want[9] = {0x00, 0x00, 0x09, 0xA3, 0x6F, 0xEF, 0x80, 0x06, 0x00};
  for (int i = 0; i < 9; ++i) EXPECT_EQ(c.data<uint8_t>()[i], want[i]) << i;
  Tensor sat = Tensor::empty({3, 3}, DType::U8);
  hif8_encode(x, sat, true);
  EXPECT_EQ(sat.data<uint8_t>()[4], 0x6E);
  EXPECT_EQ(sat.data<uint8_t>()[5], 0xEE);
  Tensor d = hif8_decode(c);
  for (int i = 0; i < 9; ++i) {
    float r = hif8_round(v[i]);
    if (std::isnan(r)) EXPECT_TRUE(std::isnan(d.data<float>()[i]));
    else EXPECT_EQ(bits(d.data<float>()[i]), bits(r)) << i;
  }
  // bf16 in and out: HiF8 values are exact in bf16
  Tensor xb = x.to(DType::BF16);
  Tensor cb = hif8_encode(xb);
  for (int i = 0; i < 9; ++i)
    EXPECT_EQ(cb.data<uint8_t>()[i], hif8_encode(round_bf16(v[i]))) << i;
  Tensor db = hif8_decode(cb, DType::BF16);
  for (int i = 0; i < 9; ++i) {
    float want_v = hif8_decode(cb.data<uint8_t>()[i]);
    float got = bf16_to_f32(db.data<uint16_t>()[i]);
    if (std::isnan(want_v)) EXPECT_TRUE(std::isnan(got));
    else EXPECT_EQ(got, want_v);
  }
  // strided input
  Tensor xt = x.transpose(0, 1);
  Tensor ct = hif8_encode(xt);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) EXPECT_EQ(ct.data<uint8_t>()[i * 3 + j], want[j * 3 + i]);
}

TEST(HiF8Codec, TensorRoundMatchesScalar) {
  std::vector<float> v;
  for (int i = -200; i <= 200; ++i) v.push_back(float(i) * 0.173f + float(i * i) * 1e-3f);
  Tensor x = Tensor::from_vector(v, {int64_t(v.size())});
  Tensor out = Tensor::empty(x.shape(), DType::F32);
  hif8_round(x, out);
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(bits(out.data<float>()[i]), bits(hif8_round(v[i])));
  hif8_round(x, x);  // in place
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(bits(x.data<float>()[i]), bits(out.data<float>()[i]));
}

TEST(HiF8Codec, BadInputThrows) {
  Tensor i32 = Tensor::zeros({4}, DType::I32);
  Tensor u8 = Tensor::zeros({4}, DType::U8);
  Tensor f = Tensor::zeros({4}, DType::F32);
  Tensor f5 = Tensor::zeros({5}, DType::F32);
  EXPECT_THROW(hif8_encode(i32), Error);
  EXPECT_THROW(hif8_encode(f, f5), Error);         // wrong dtype out
  Tensor u5 = Tensor::zeros({5}, DType::U8);
  EXPECT_THROW(hif8_encode(f, u5), Error);         // wrong shape
  EXPECT_THROW(hif8_decode(f), Error);             // codes must be u8/hif8
  Tensor i32o = Tensor::zeros({4}, DType::I32);
  EXPECT_THROW(hif8_decode(u8, i32o), Error);      // output must be float
  EXPECT_THROW(hif8_round(i32, i32o), Error);
  EXPECT_THROW(hif8_encode(Tensor()), Error);
  try {
    hif8_encode(i32);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f32 or bf16"), std::string::npos) << e.what();
  }
}

// Philox4x32-10 known-answer vectors from the Random123 distribution (kat_vectors).
TEST(HiF8Codec, PhiloxKnownAnswer) {
  using namespace osp::quant::detail;
  Philox4 z = philox4x32_10({{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(z.v[0], 0x6627e8d5u);
  EXPECT_EQ(z.v[1], 0xe169c58du);
  EXPECT_EQ(z.v[2], 0xbc57ac4cu);
  EXPECT_EQ(z.v[3], 0x9b00dbd8u);
  Philox4 f = philox4x32_10({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu,
                            0xffffffffu);
  EXPECT_EQ(f.v[0], 0x408f276du);
  EXPECT_EQ(f.v[1], 0x41c83b0eu);
  EXPECT_EQ(f.v[2], 0xa20bc7c6u);
  EXPECT_EQ(f.v[3], 0x6d5451fdu);
}
