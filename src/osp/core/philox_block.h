// One Philox4x32-10 block (Salmon et al., SC'11: the generator cuRAND and PyTorch use) as a
// host + device inline function: the one implementation behind core's noise (core/philox.h:
// philox4x32_10 on std::arrays) and osp::quant's stochastic rounding (quant/philox.h).
#pragma once
#include <cstdint>

#include "osp/core/host_device.h"  // OSP_HD

namespace osp::detail {

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

}  // namespace osp::detail
