// Learning-rate schedule: linear warm-up, then constant or cosine decay to zero.
//
// For the optimizer step with 0-based index s (the first step is s = 0), base rate lr,
// W warm-up steps and T total steps:
//   s < W:                 lr · (s + 1) / W
//   constant, s ≥ W:       lr
//   cosine,   s ≥ W:       lr · ½ · (1 + cos(π · min(1, (s − W) / max(1, T − W))))
// (OSP-Next's SFT runs a constant rate without warm-up: W = 0, constant.)
#pragma once
#include <cstdint>
#include <string>

namespace osp::train {

struct LrSchedule {
  enum class Kind { Constant, Cosine };
  double lr = 1e-4;
  int64_t warmup = 0;
  int64_t total = 1;
  Kind kind = Kind::Constant;

  double at(int64_t step) const;
  // Throws osp::Error naming the rule (lr ≥ 0 finite, warmup ≥ 0, total ≥ 1).
  void validate() const;
  static Kind parse_kind(const std::string& s);  // "constant" | "cosine"
  static const char* kind_name(Kind k);
};

}  // namespace osp::train
