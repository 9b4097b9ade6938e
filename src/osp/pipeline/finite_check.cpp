#include "osp/pipeline/finite_check.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "osp/core/error.h"

namespace osp::pipeline {

namespace {
// Exponent-all-ones test on the raw bits: no float conversion, so it runs at memory speed.
template <typename U>
int64_t scan(const U* p, int64_t n, U exp_mask) {
  int64_t first = std::numeric_limits<int64_t>::max();
#pragma omp parallel for schedule(static) reduction(min : first) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i)
    if ((p[i] & exp_mask) == exp_mask) first = std::min(first, i);
  return first == std::numeric_limits<int64_t>::max() ? -1 : first;
}
}  // namespace

int64_t first_non_finite(const Tensor& t) {
  if (!t.defined() || t.numel() == 0) return -1;
  const DType dt = t.dtype();
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16) return -1;
  const Tensor c = t.device().is_cpu() ? t.contiguous() : t.to(Device::cpu()).contiguous();
  const int64_t n = c.numel();
  if (dt == DType::F32) return scan(static_cast<const uint32_t*>(c.raw()), n, uint32_t(0x7f800000u));
  if (dt == DType::BF16) return scan(static_cast<const uint16_t*>(c.raw()), n, uint16_t(0x7f80u));
  return scan(static_cast<const uint16_t*>(c.raw()), n, uint16_t(0x7c00u));
}

void check_finite_weight(const Tensor& t, const std::string& name, const std::string& file) {
  const int64_t i = first_non_finite(t);
  OSP_CHECK(i < 0, file, ": tensor '", name, "' holds NaN/Inf values (first at element ", i,
            " of ", t.numel(), "); the weights are corrupt: download or convert them again");
}

void check_finite_latent(const Tensor& x, int step, int steps) {
  const int64_t i = first_non_finite(x);
  OSP_CHECK(i < 0, "the latent became NaN/Inf after sampling step ", step, " of ", steps,
            " (first at element ", i, "); stopping instead of writing a black video. Try another "
            "--seed, --quant none, a smaller --guidance, or check the model weights");
}

}  // namespace osp::pipeline
