// core's E4M3 codec (core/e4m3.h, the one osp uses everywhere: dtype conversions and the FP8
// kernels) against the definition — the nearest of the 127 finite magnitudes, ties to the even
// code, saturating at ±448 — on every tie point between neighbouring codes, one ulp either side
// of it, and a sweep over the fp32 bit patterns; decode(encode(x)) = x on every code.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "osp/core/dtype.h"
#include "osp/core/e4m3.h"

namespace {

float decode_def(int c) {  // the format's definition, independent of the codec
  const int e = (c >> 3) & 0xf, m = c & 7;
  return e == 0 ? std::ldexp(float(m), -9) : std::ldexp(1.0f + float(m) / 8.0f, e - 7);
}

uint8_t encode_def(float f) {
  if (std::isnan(f)) return std::signbit(f) ? 0xff : 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;
  uint8_t best = 0;
  float bestd = INFINITY;
  for (int c = 0; c < 0x7f; ++c) {
    const float d = std::fabs(decode_def(c) - a);
    if (d < bestd || (d == bestd && (c & 1) == 0)) bestd = d, best = uint8_t(c);
  }
  return sign | best;
}

float bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

TEST(E4M3, EncodeIsTheNearestCodeTiesToEven) {
  int checked = 0;
  for (int c = 0; c + 1 < 0x7f; ++c) {  // every tie between neighbours and one ulp each side
    const float mid = 0.5f * (decode_def(c) + decode_def(c + 1));
    for (const float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1000.0f)})
      for (const float s : {1.0f, -1.0f}) {
        ASSERT_EQ(osp::f32_to_e4m3(s * x), encode_def(s * x)) << s * x;
        ++checked;
      }
  }
  for (uint64_t u = 0; u <= 0xffffffffull; u += 65521) {  // a sweep over the fp32 bit patterns
    const float x = bits(uint32_t(u));
    if (std::isnan(x)) continue;
    ASSERT_EQ(osp::f32_to_e4m3(x), encode_def(x)) << x << " (bits 0x" << std::hex << u << ")";
    ++checked;
  }
  EXPECT_GT(checked, 60000);
  EXPECT_EQ(osp::f32_to_e4m3(1e30f), 0x7e);
  EXPECT_EQ(osp::f32_to_e4m3(-INFINITY), 0xfe);
  EXPECT_EQ(osp::f32_to_e4m3(NAN) & 0x7f, 0x7f);
}

TEST(E4M3, DecodeOfEveryCode) {
  for (int c = 0; c < 256; ++c) {
    const float v = osp::e4m3_to_f32(uint8_t(c));
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    EXPECT_EQ(v, (c & 0x80 ? -1.0f : 1.0f) * decode_def(c & 0x7f)) << c;
    if ((c & 0x7f) != 0) EXPECT_EQ(osp::f32_to_e4m3(v), uint8_t(c)) << c;  // (−0 encodes as 0x80)
    EXPECT_EQ(osp::detail::e4m3_decode_bits(uint8_t(c)), v) << c;
  }
}
