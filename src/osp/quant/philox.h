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

#include "osp/core/philox_block.h"  // the Philox block, OSP_HD

namespace osp::quant::detail {

using osp::detail::Philox4;
using osp::detail::philox4x32_10;

// The random word for element `index` of stream `seed` (see the convention above).
OSP_HD uint32_t philox_word(uint64_t seed, uint64_t index) {
  const uint64_t b = index >> 2;
  Philox4 c{{uint32_t(b), uint32_t(b >> 32), 0u, 0u}};
  const Philox4 r = philox4x32_10(c, uint32_t(seed), uint32_t(seed >> 32));
  const uint32_t q = uint32_t(index) & 3u;
  return q == 0 ? r.v[0] : q == 1 ? r.v[1] : q == 2 ? r.v[2] : r.v[3];
}

}  // namespace osp::quant::detail
