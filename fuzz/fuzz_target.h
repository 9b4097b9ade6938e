// Shared by the fuzz targets: run a parser on hostile bytes; osp::Error is the expected outcome
// for bad input, anything else (a crash, a sanitizer report, another exception) is a finding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "osp/core/error.h"
#include "osp/core/tensor.h"

namespace osp::fuzz {

// Reads every byte of a CPU tensor (so a view past its buffer shows up under ASan).
inline uint64_t touch(const Tensor& t) {
  if (!t.defined() || t.nbytes() == 0) return 0;
  const Tensor c = t.contiguous();
  const auto* p = static_cast<const uint8_t*>(c.raw());
  uint64_t s = 0;
  for (size_t i = 0; i < c.nbytes(); ++i) s += p[i];
  return s;
}

template <typename Fn>
void expect_only_osp_errors(Fn&& fn) {
  try {
    fn();
  } catch (const osp::Error&) {
    // a clear, expected refusal of bad input
  }
}

}  // namespace osp::fuzz
