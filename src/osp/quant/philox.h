// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator cuRAND and PyTorch use. Host + device inline.
//
// Stream convention used by osp::quant (documented so results never depend on thread count,
// block size or device): the random word for element i of a call with (seed, offset) is word
// g mod 4 of the Philox block of g / 4, g = offset + i:
//   philox4x32_10(counter = {lo32(g / 4), hi32(g / 4), 0, 0},
//                 key     = {lo32(seed), hi32(seed)})[g mod 4]
// i.e. one Philox block per 4 consecutive elements (all four output words used), so a
// bandwidth-bound kernel spends a quarter of a Philox call per element.
#pragma once
#include <cstdint>

#include "osp/quant/hif8_scalar.h"  // OSP_HD

namespace osp::quant::detail {

struct Philox4 {
  uint32_t v[4];
};

OSP_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

OSP_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, ctr.v[0], hi0, lo0);
    philox_mulhilo(kM1, ctr.v[2], hi1, lo1);
    Philox4 n;
    n.v[0] = hi1 ^ ctr.v[1] ^ k0;
    n.v[1] = lo1;
    n.v[2] = hi0 ^ ctr.v[3] ^ k1;
    n.v[3] = lo0;
    ctr = n;
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

// The random word for element `index` of stream `seed` (see the convention above).
OSP_HD uint32_t philox_word(uint64_t seed, uint64_t index) {
  const uint64_t b = index >> 2;
  Philox4 c{{uint32_t(b), uint32_t(b >> 32), 0u, 0u}};
  const Philox4 r = philox4x32_10(c, uint32_t(seed), uint32_t(seed >> 32));
  const uint32_t q = uint32_t(index) & 3u;
  return q == 0 ? r.v[0] : q == 1 ? r.v[1] : q == 2 ? r.v[2] : r.v[3];
}

}  // namespace osp::quant::detail
