#include "osp/train/grad_clip.h"

#include <cmath>
#include <cstdlib>
#include <vector>

#include "osp/core/error.h"
#include "osp/train/adamw.h"
#ifdef OSP_HAVE_CUDA
#include "osp/train/cuda/train_kernels.h"
#endif

namespace osp::train {
namespace {

constexpr int64_t kChunk = 65536;

double sum_squares_cpu(const float* g, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(size_t(chunks), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
    double s = 0.0;
    for (int64_t i = b; i < e; ++i) s += double(g[i]) * double(g[i]);
    part[size_t(c)] = s;
  }
  double s = 0.0;
  for (double x : part) s += x;
  return s;
}

}  // namespace

double grad_norm(const ParamTable& params) {
  check_param_table(params, true, /*need_values=*/false);
  double total = 0.0;
  for (const auto& p : params) {
    const Tensor& g = *p.grad;
    if (g.device().is_cpu()) {
      total += sum_squares_cpu(g.data<float>(), g.numel());
    } else {
#ifdef OSP_HAVE_CUDA
      total += cuda::sum_squares(g.data<float>(), g.numel());
#else
      fail(str("grad_norm: '", p.name, "' is on ", g.device().name(), " but this build has no CUDA"));
#endif
    }
  }
  return std::sqrt(total);
}

void scale_grads(const ParamTable& params, float s) {
  for (const auto& p : params) {
    Tensor& g = *p.grad;
    const int64_t n = g.numel();
    if (g.device().is_cpu()) {
      float* d = g.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) d[i] *= s;
    } else {
#ifdef OSP_HAVE_CUDA
      cuda::scale(g.data<float>(), n, s);
#else
      fail(str("scale_grads: '", p.name, "' is on ", g.device().name(), " but this build has no CUDA"));
#endif
    }
  }
}

GradClipConfig GradClipConfig::parse(const std::string& s) {
  GradClipConfig c;
  if (s == "none") {
    c.mode = Mode::None;
  } else if (s == "adaptive") {
    c.mode = Mode::Adaptive;
  } else if (s.rfind("fixed:", 0) == 0) {
    const std::string num = s.substr(6);
    char* end = nullptr;
    const double x = std::strtod(num.c_str(), &end);
    if (!(!num.empty() && end && *end == 0 && std::isfinite(x) && x > 0))
      fail(osp::str("--clip fixed:X needs a max norm X > 0, got '", s, "'"));
    c.mode = Mode::Fixed;
    c.max_norm = x;
  } else {
    fail(osp::str("--clip must be none, fixed:X (X > 0) or adaptive, got '", s, "'"));
  }
  return c;
}

std::string GradClipConfig::str() const {
  switch (mode) {
    case Mode::None: return "none";
    case Mode::Adaptive: return "adaptive";
    case Mode::Fixed: return osp::str("fixed:", max_norm);
  }
  return "none";
}

double GradClipper::apply_rule(double norm, ClipResult& r) {
  r.norm = norm;
  r.norm_after = norm;
  r.clipped = false;
  r.threshold = 0.0;
  OSP_CHECK(std::isfinite(norm), "gradient clipping: the gradient norm is ", norm,
            " (NaN/Inf gradients)");
  double factor = 1.0;
  switch (cfg_.mode) {
    case GradClipConfig::Mode::None:
      break;
    case GradClipConfig::Mode::Fixed:
      r.threshold = cfg_.max_norm;
      if (norm > cfg_.max_norm) factor = cfg_.max_norm / (norm + 1e-6);
      break;
    case GradClipConfig::Mode::Adaptive: {
      if (!st_.initialised) {
        st_.mean = std::min(3.0 * norm, cfg_.init_max_norm);
        st_.var = 0.0;
        st_.initialised = true;
        break;
      }
      const double d = cfg_.ema_decay;
      const double t = st_.mean + cfg_.num_std * std::sqrt(st_.var);
      r.threshold = t;
      if (norm <= t) {
        st_.mean = d * st_.mean + (1 - d) * norm;
        const double dev = st_.mean - norm;
        st_.var = d * st_.var + (1 - d) * dev * dev;
      } else {
        factor = t / (norm + 1e-6);
      }
      break;
    }
  }
  if (factor < 1.0) {
    r.clipped = true;
    r.norm_after = norm * factor;
  }
  return factor;
}

ClipResult GradClipper::clip(const ParamTable& params) {
  ClipResult r;
  const double factor = apply_rule(grad_norm(params), r);
  if (r.clipped) scale_grads(params, float(factor));
  return r;
}

}  // namespace osp::train
