// The table-driven HiF8 encoding of the CUDA streaming kernels (quant/cuda/hif8_lut.h) against
// the reference scalar codec (hif8_scalar.h), bit for bit: TA through the 8192-entry prefix
// table for every bf16 pattern and an fp32 sweep (every exponent and sign, a stride through the
// mantissas plus every rounding boundary ±2), both saturation modes, NaN payloads; hybrid
// (stochastic) rounding through the prefix and per-exponent tables for the same inputs under
// random words and the extreme words 0, 1, 2^32−1 and the words at the rounding thresholds.
// (One-off exhaustive runs over all 2^32 fp32 patterns found no difference for TA.)
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "osp/quant/cuda/hif8_lut.h"

using namespace osp::quant::detail;

namespace {

struct Tables {
  uint8_t code[2][kHiF8LutSize];
  SrEntry sr[256];
  Tables() {
    for (int s = 0; s < 2; ++s)
      for (uint32_t k = 0; k < uint32_t(kHiF8LutSize); ++k) code[s][k] = hif8_lut_entry(k, s != 0);
    for (int be = 0; be < 256; ++be) sr[be] = hif8_sr_entry(be);
  }
};

// What the kernels feed the table with: x + 0 (on the GPU NaN becomes 0x7fffffff; the host
// FPU keeps the payload with the quiet bit set: both land on NaN entries).
float canon(float x) {
  volatile float zero = 0.0f;
  return x + zero;
}

// Inputs: every exponent and sign with a mantissa stride, every rounding boundary of the 0..3
// bit grids ±2 ulps, and the NaN patterns whose top mantissa bits are zero.
std::vector<uint32_t> sweep_patterns() {
  std::vector<uint32_t> v;
  for (uint32_t se = 0; se < 512; ++se) {
    auto add = [&](uint32_t f) { v.push_back((se << 23) | (f & 0x7fffffu)); };
    for (uint32_t f = 0; f < (1u << 23); f += 2053) add(f);
    for (uint32_t k = 0; k <= 16; ++k)
      for (int d = -2; d <= 2; ++d) add(k * (1u << 19) + uint32_t(d));
    add(0x7fffffu);
  }
  for (uint32_t nan : {0x7f800001u, 0x7f87ffffu, 0x7f840000u, 0xff800001u, 0xff87ffffu})
    v.push_back(nan);
  return v;
}

}  // namespace

TEST(HiF8Lut, TaAllBf16PatternsMatchReference) {
  static Tables t;
  for (int sat = 0; sat < 2; ++sat)
    for (uint32_t h = 0; h < 65536; ++h) {
      const float x = bits_f32(h << 16);
      ASSERT_EQ(t.code[sat][hif8_lut_index(canon(x))], hif8_encode_ta(x, sat))
          << "bf16 bits 0x" << std::hex << h << " saturate " << sat;
    }
}

TEST(HiF8Lut, TaFp32SweepMatchesReference) {
  static Tables t;
  for (uint32_t u : sweep_patterns())
    for (int sat = 0; sat < 2; ++sat) {
      const float x = bits_f32(u);
      ASSERT_EQ(t.code[sat][hif8_lut_index(canon(x))], hif8_encode_ta(x, sat))
          << "fp32 bits 0x" << std::hex << u << " saturate " << sat;
    }
}

TEST(HiF8Lut, TableEntriesAreCodesOfExactValuesOnTheirOwnPrefix) {
  // the prefix of an exact HiF8 value indexes its own code: what the hybrid path relies on
  static Tables t;
  for (int c = 0; c < 256; ++c) {
    const float v = hif8_decode(uint8_t(c));
    if (v != v) continue;  // NaN
    EXPECT_EQ(t.code[0][hif8_lut_index(canon(v))], uint8_t(c)) << "code " << c;
  }
}

TEST(HiF8Lut, HybridMatchesReference) {
  static Tables t;
  std::mt19937 g(2024);
  const std::vector<uint32_t> pats = sweep_patterns();
  for (uint32_t u : pats) {
    const float x = bits_f32(u);
    // random words, the extremes, and the words at the up/down threshold of this input
    uint32_t words[8] = {uint32_t(g()), uint32_t(g()), uint32_t(g()), 0u,
                         1u,            0xffffffffu,   0x80000000u,   0u};
    const uint32_t a = u & 0x7fffffffu;
    const int E = int(a >> 23) - 127;
    if (E >= -22 && E <= 15) {
      const int shift = 23 - hif8_mant_bits(E);
      const uint32_t rem = a & ((1u << shift) - 1u);
      words[7] = rem << (32 - shift);  // r >> (32 − shift) == rem: the first "down" word
    } else if (E == -23) {
      words[7] = ((1u << 23) | (a & 0x7fffffu)) << 8;
    }
    for (uint32_t r : words)
      for (int sat = 0; sat < 2; ++sat) {
        const uint8_t got = t.code[sat][hif8_sr_index(canon(x), r, t.sr)];
        ASSERT_EQ(got, hif8_encode_hybrid(x, sat, r))
            << "fp32 bits 0x" << std::hex << u << " r 0x" << r << " saturate " << sat;
        if (words[7] && r == words[7]) {
          // one below the threshold word rounds the other way (where that word exists)
          const uint32_t r1 = r - (E == -23 ? 256u : (1u << (32 - (23 - hif8_mant_bits(E)))));
          ASSERT_EQ(t.code[sat][hif8_sr_index(canon(x), r1, t.sr)], hif8_encode_hybrid(x, sat, r1))
              << "fp32 bits 0x" << std::hex << u << " r 0x" << r1;
        }
      }
  }
}

TEST(HiF8Lut, HybridAllBf16PatternsRandomWords) {
  static Tables t;
  std::mt19937 g(7);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float x = bits_f32(h << 16);
    for (int k = 0; k < 4; ++k) {
      const uint32_t r = g();
      ASSERT_EQ(t.code[0][hif8_sr_index(canon(x), r, t.sr)], hif8_encode_hybrid(x, false, r))
          << "bf16 bits 0x" << std::hex << h << " r 0x" << r;
    }
  }
}
