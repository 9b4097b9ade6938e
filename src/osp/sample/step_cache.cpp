#include "osp/sample/step_cache.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "osp/core/error.h"
#include "osp/io/atomic_file.h"

namespace osp::sample {

std::string StepCacheSpec::str() const {
  if (kind == Kind::None) return "none";
  if (kind == Kind::MagCache) return osp::str("magcache:", threshold, ":", max_skips);
  return osp::str("teacache:", threshold);
}

StepCacheSpec parse_step_cache(const std::string& spec) {
  StepCacheSpec s;
  if (spec.empty() || spec == "none") return s;
  const std::string usage =
      "give none, teacache:THRESH or magcache:THRESH[:K] (THRESH a number >= 0, e.g. teacache:0.1 or magcache:0.12; "
      "0 caches nothing; K >= 1 the most consecutive reused steps, default 2)";
  const size_t colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  OSP_CHECK(kind == "teacache" || kind == "magcache", "--cache '", spec, "': unknown step cache '", kind, "'; ", usage);
  OSP_CHECK(colon != std::string::npos && colon + 1 < spec.size(), "--cache '", spec,
            "': the threshold is missing; ", usage);
  std::string num = spec.substr(colon + 1), k;
  if (kind == "magcache") {
    const size_t c2 = num.find(':');
    if (c2 != std::string::npos) k = num.substr(c2 + 1), num = num.substr(0, c2);
  }
  errno = 0;
  char* end = nullptr;
  const double t = std::strtod(num.c_str(), &end);
  OSP_CHECK(!num.empty() && end == num.c_str() + num.size() && errno == 0 &&
                !std::isspace(static_cast<unsigned char>(num[0])),
            "--cache '", spec, "': the threshold '", num, "' is not a number; ", usage);
  OSP_CHECK(std::isfinite(t) && t >= 0, "--cache '", spec, "': the threshold must be a finite number >= 0, got ",
            num, "; ", usage);
  s.kind = kind == "teacache" ? StepCacheSpec::Kind::TeaCache : StepCacheSpec::Kind::MagCache;
  s.threshold = t;
  if (!k.empty()) {
    errno = 0;
    const long v = std::strtol(k.c_str(), &end, 10);
    OSP_CHECK(end == k.c_str() + k.size() && errno == 0 && v >= 1 && v <= 1000, "--cache '", spec,
              "': K must be an integer >= 1, got '", k, "'; ", usage);
    s.max_skips = int(v);
  }
  return s;
}

bool StepCachePolicy::decide(bool run) {
  if (agree_) run = agree_(run);
  ++(run ? computed_ : reused_);
  return run;
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
  run = decide(run);
  if (run) acc_.assign(size_t(B), 0.0);
  prev_.resize(size_t(B));
  for (int64_t b = 0; b < B; ++b)
    prev_[size_t(b)].assign(cur.begin() + ptrdiff_t(size_t(b) * per), cur.begin() + ptrdiff_t(size_t(b + 1) * per));
  return run;
}

MagCache::MagCache(double threshold, int max_skips, int steps, std::vector<double> gamma, double retention)
    : threshold_(threshold), retention_(retention), max_skips_(max_skips), steps_(steps), gamma_(std::move(gamma)) {
  OSP_CHECK(std::isfinite(threshold) && threshold >= 0, "MagCache: threshold must be finite and >= 0, got ",
            threshold);
  OSP_CHECK(max_skips >= 1, "MagCache: K must be >= 1, got ", max_skips);
  OSP_CHECK(steps >= 1 && int64_t(gamma_.size()) == steps, "MagCache: ", steps, " steps need as many ratios, got ",
            gamma_.size());
  OSP_CHECK(retention >= 0 && retention <= 1, "MagCache: retention must be in [0, 1], got ", retention);
}

bool MagCache::compute(int step, const Tensor&) {
  OSP_CHECK(step == next_, "MagCache: steps must come in order 0, 1, ...; expected ", next_, ", got ", step);
  OSP_CHECK(step < steps_, "MagCache: step ", step, " of a ", steps_, "-step run");
  ++next_;
  bool run = step < int(double(steps_) * retention_) || step == 0;
  if (!run) {
    ratio_ *= gamma_[size_t(step)];
    since_ += 1;
    err_ += std::fabs(1.0 - ratio_);
    run = !(err_ < threshold_ && since_ <= max_skips_);
  }
  run = decide(run);
  if (run) ratio_ = 1, err_ = 0, since_ = 0;
  return run;
}

MagCacheRatios MagCacheRatios::load(const std::string& path) {
  std::ifstream f(path);
  OSP_CHECK(f.good(), "MagCache calibration ", path, ": cannot read it (make one with osp generate --cache-calibrate ",
            path, ")");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail(str("MagCache calibration ", path, ": not valid JSON (", e.what(), ")"));
  }
  OSP_CHECK(j.is_object() && j.value("format", "") == "osp-magcache-1", "MagCache calibration ", path,
            ": not an osp MagCache calibration (format \"osp-magcache-1\")");
  MagCacheRatios m;
  try {
    m.steps = j.at("steps").get<int>();
    m.ratios = j.at("ratios").get<std::vector<std::vector<double>>>();
    m.note = j.value("note", "");
  } catch (const nlohmann::json::exception& e) {
    fail(str("MagCache calibration ", path, ": ", e.what()));
  }
  OSP_CHECK(m.steps >= 2 && !m.ratios.empty(), "MagCache calibration ", path,
            ": needs steps >= 2 and at least one row of ratios");
  for (const auto& row : m.ratios) {
    OSP_CHECK(int64_t(row.size()) == m.steps, "MagCache calibration ", path, ": a row has ", row.size(),
              " ratios for ", m.steps, " steps");
    for (double g : row)
      OSP_CHECK(std::isfinite(g) && g > 0, "MagCache calibration ", path, ": ratio ", g, " is not finite and > 0");
  }
  return m;
}

void MagCacheRatios::save(const std::string& path) const {
  const nlohmann::json j = {{"format", "osp-magcache-1"}, {"steps", steps}, {"ratios", ratios}, {"note", note}};
  io::write_text_atomic(path, j.dump() + "\n", io::Overwrite::Allow);
}

std::vector<double> MagCacheRatios::resampled(size_t r, int n) const {
  OSP_CHECK(!ratios.empty() && n >= 1, "MagCacheRatios::resampled: no ratios or no steps");
  const std::vector<double>& src = ratios[std::min(r, ratios.size() - 1)];
  std::vector<double> out(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const double pos = n == 1 ? double(src.size() - 1) : double(i) * double(src.size() - 1) / double(n - 1);
    out[size_t(i)] = src[size_t(std::llround(pos))];
  }
  return out;
}

std::vector<double> residual_magnitude_ratios(const Tensor& r, const Tensor& prev) {
  OSP_CHECK(r.defined() && prev.defined() && r.dim() == 3 && r.shape() == prev.shape(),
            "residual_magnitude_ratios: r and prev must be [B, n, dim] of one shape, got ",
            r.defined() ? r.desc() : std::string("undefined"), " and ", prev.defined() ? prev.desc() : std::string("undefined"));
  const Tensor a = r.to(Device::cpu()).to(DType::F32).contiguous(), b = prev.to(Device::cpu()).to(DType::F32).contiguous();
  const int64_t B = r.size(0), n = r.size(1), d = r.size(2);
  std::vector<double> out(size_t(B), 1.0);
  for (int64_t s = 0; s < B; ++s) {
    double sum = 0;
    int64_t used = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float* x = a.data<float>() + (s * n + i) * d;
      const float* y = b.data<float>() + (s * n + i) * d;
      double nx = 0, ny = 0;
      for (int64_t c = 0; c < d; ++c) nx += double(x[c]) * x[c], ny += double(y[c]) * y[c];
      if (ny > 0) sum += std::sqrt(nx / ny), ++used;
    }
    if (used > 0) out[size_t(s)] = sum / double(used);
  }
  return out;
}

}  // namespace osp::sample
