// The branch-free HiF8 TA encoder used by the bandwidth-bound CUDA kernels
// (quant/cuda/hif8_fast.h) against the reference scalar encoder (hif8_scalar.h), bit for bit:
// every bf16 bit pattern, every fp32 exponent with a stride through the mantissas (ties, carries
// into the next binade and the band edges included), both saturation modes. (An exhaustive run
// over all 2^32 fp32 patterns, both modes, found no difference; too slow for CI.)
#include <gtest/gtest.h>

#include <cstdint>

#include "osp/quant/cuda/hif8_fast.h"

using namespace osp::quant::detail;

namespace {
struct Lut {
  uint8_t c[kHiF8IdxCount];
  Lut() {
    for (int i = 0; i < kHiF8IdxCount; ++i) c[i] = hif8_encode_ta(hif8_idx_value(i), false);
  }
};
}  // namespace

TEST(HiF8Fast, AllBf16PatternsMatchReference) {
  Lut lut;
  for (int sat = 0; sat < 2; ++sat)
    for (uint32_t h = 0; h < 65536; ++h) {
      const float x = bits_f32(h << 16);
      ASSERT_EQ(hif8_encode_ta_fast(x, sat, lut.c), hif8_encode_ta(x, sat))
          << "bf16 bits 0x" << std::hex << h << " saturate " << sat;
    }
}

TEST(HiF8Fast, Fp32MantissaSweepMatchesReference) {
  Lut lut;
  // every exponent and sign; mantissas: a stride plus the neighbourhood of every rounding
  // boundary of the 0..3-bit mantissa grids (f = k·2^20 ± 1 and the half points)
  for (int sat = 0; sat < 2; ++sat)
    for (uint32_t se = 0; se < 512; ++se) {
      auto check = [&](uint32_t f) {
        const uint32_t u = (se << 23) | (f & 0x7fffffu);
        const float x = bits_f32(u);
        ASSERT_EQ(hif8_encode_ta_fast(x, sat, lut.c), hif8_encode_ta(x, sat))
            << "fp32 bits 0x" << std::hex << u << " saturate " << sat;
      };
      for (uint32_t f = 0; f < (1u << 23); f += 4099) check(f);
      for (uint32_t k = 0; k <= 16; ++k)
        for (int d = -2; d <= 2; ++d) check(k * (1u << 19) + uint32_t(d));
      check(0x7fffffu);
    }
}
