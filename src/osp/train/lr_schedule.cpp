#include "osp/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "osp/core/error.h"

namespace osp::train {

double LrSchedule::at(int64_t s) const {
  if (s < 0) s = 0;
  if (s < warmup) return lr * double(s + 1) / double(warmup);
  if (kind == Kind::Constant) return lr;
  const double span = double(std::max<int64_t>(1, total - warmup));
  const double p = std::min(1.0, double(s - warmup) / span);
  return lr * 0.5 * (1.0 + std::cos(M_PI * p));
}

void LrSchedule::validate() const {
  OSP_CHECK(std::isfinite(lr) && lr >= 0, "learning rate must be a finite number >= 0, got ", lr);
  OSP_CHECK(warmup >= 0, "warm-up steps must be >= 0, got ", warmup);
  OSP_CHECK(total >= 1, "total steps must be >= 1, got ", total);
}

LrSchedule::Kind LrSchedule::parse_kind(const std::string& s) {
  if (s == "constant") return Kind::Constant;
  if (s == "cosine") return Kind::Cosine;
  fail(str("--schedule must be constant or cosine, got '", s, "'"));
}

const char* LrSchedule::kind_name(Kind k) { return k == Kind::Cosine ? "cosine" : "constant"; }

}  // namespace osp::train
