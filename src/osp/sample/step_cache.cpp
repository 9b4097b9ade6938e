#include "osp/sample/step_cache.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "osp/core/error.h"

namespace osp::sample {

std::string StepCacheSpec::str() const {
  if (kind == Kind::None) return "none";
  return osp::str("teacache:", threshold);
}

StepCacheSpec parse_step_cache(const std::string& spec) {
  StepCacheSpec s;
  if (spec.empty() || spec == "none") return s;
  const std::string usage = "give none or teacache:THRESH (THRESH a number >= 0, e.g. teacache:0.1; 0 caches nothing)";
  const size_t colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  OSP_CHECK(kind == "teacache", "--cache '", spec, "': unknown step cache '", kind, "'; ", usage);
  OSP_CHECK(colon != std::string::npos && colon + 1 < spec.size(), "--cache '", spec,
            "': the threshold is missing; ", usage);
  const std::string num = spec.substr(colon + 1);
  errno = 0;
  char* end = nullptr;
  const double t = std::strtod(num.c_str(), &end);
  OSP_CHECK(end == num.c_str() + num.size() && errno == 0 && !std::isspace(static_cast<unsigned char>(num[0])),
            "--cache '", spec, "': the threshold '", num, "' is not a number; ", usage);
  OSP_CHECK(std::isfinite(t) && t >= 0, "--cache '", spec, "': the threshold must be a finite number >= 0, got ",
            num, "; ", usage);
  s.kind = StepCacheSpec::Kind::TeaCache;
  s.threshold = t;
  return s;
}

std::vector<double> teacache_polynomial(int64_t dim, std::string* name) {
  // TeaCache4Wan2.1's "use_ret_steps" polynomials (indicator on e0), highest degree first,
  // as published in ali-vilab/TeaCache (fitted by the TeaCache authors, not by osp).
  if (dim == 1536) {
    if (name) *name = "Wan2.1 T2V-1.3B polynomial (TeaCache)";
    return {-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02};
  }
  if (dim == 5120) {
    if (name) *name = "Wan2.1 T2V-14B polynomial (TeaCache)";
    return {-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01};
  }
  if (name) *name = "none (raw relative L1 change)";
  return {};
}

TeaCache::TeaCache(double threshold, int steps, std::vector<double> poly)
    : threshold_(threshold), steps_(steps), poly_(std::move(poly)) {
  OSP_CHECK(std::isfinite(threshold) && threshold >= 0, "TeaCache: threshold must be finite and >= 0, got ",
            threshold);
  OSP_CHECK(steps >= 1, "TeaCache: steps must be >= 1, got ", steps);
}

bool TeaCache::compute(int step, const Tensor& e0) {
  OSP_CHECK(step == next_, "TeaCache: steps must come in order 0, 1, ...; expected ", next_, ", got ", step);
  OSP_CHECK(step < steps_, "TeaCache: step ", step, " of a ", steps_, "-step run");
  OSP_CHECK(e0.defined() && e0.dim() == 3 && e0.size(0) >= 1, "TeaCache: e0 must be [B, 6, dim], got ",
            e0.defined() ? e0.desc() : std::string("undefined"));
  ++next_;
  const int64_t B = e0.size(0);
  const std::vector<float> cur = e0.to_float_vector();
  const size_t per = cur.size() / size_t(B);
  const bool forced = step == 0 || step == steps_ - 1 || int64_t(prev_.size()) != B;
  bool run = forced;
  if (!forced) {
    // Every row accumulates its own indicator; the batch reuses only if every row may.
    bool all_below = true;
    for (int64_t b = 0; b < B; ++b) {
      const float* c = cur.data() + size_t(b) * per;
      const std::vector<float>& p = prev_[size_t(b)];
      double num = 0, den = 0;
      for (size_t k = 0; k < per; ++k) {
        num += std::fabs(double(c[k]) - double(p[k]));
        den += std::fabs(double(p[k]));
      }
      const double d = den > 0 ? num / den : (num > 0 ? INFINITY : 0.0);
      double r = d;
      if (!poly_.empty() && std::isfinite(d)) {
        r = 0;
        for (double a : poly_) r = r * d + a;  // Horner, highest degree first
      }
      r = std::isnan(r) ? INFINITY : std::max(0.0, r);  // a distance: the fit's negative values clip to 0
      acc_[size_t(b)] += r;
      if (b == 0) last_ = r;
      if (!(acc_[size_t(b)] < threshold_)) all_below = false;
    }
    run = !all_below;
  } else {
    last_ = 0;
  }
  if (agree_) run = agree_(run);
  if (run) {
    acc_.assign(size_t(B), 0.0);
    ++computed_;
  } else {
    ++reused_;
  }
  prev_.resize(size_t(B));
  for (int64_t b = 0; b < B; ++b)
    prev_[size_t(b)].assign(cur.begin() + ptrdiff_t(size_t(b) * per), cur.begin() + ptrdiff_t(size_t(b + 1) * per));
  return run;
}

}  // namespace osp::sample
