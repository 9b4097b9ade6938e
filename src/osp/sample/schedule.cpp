#include "osp/sample/schedule.h"

#include <cmath>
#include <cstdint>

#include "osp/core/error.h"

namespace osp::sample {

std::vector<double> linspace(double start, double stop, int num) {
  OSP_CHECK(num >= 0, "linspace: num must be >= 0, got ", num);
  std::vector<double> y(static_cast<size_t>(num));
  if (num == 0) return y;
  if (num == 1) {
    y[0] = start;
    return y;
  }
  const double div = double(num - 1);
  const double delta = stop - start;
  const double step = delta / div;
  for (int i = 0; i < num; ++i) {
    if (step == 0)
      y[size_t(i)] = (double(i) / div) * delta + start;
    else
      y[size_t(i)] = double(i) * step + start;
  }
  y[size_t(num - 1)] = stop;
  return y;
}

double shift_sigma(double sigma, double shift) { return shift * sigma / (1.0 + (shift - 1.0) * sigma); }

void check_schedule_args(int steps, double shift) {
  OSP_CHECK(steps >= 1 && steps <= 1000, "sampling steps must be in [1, 1000], got ", steps);
  OSP_CHECK(std::isfinite(shift) && shift > 0, "flow shift must be a positive number, got ", shift,
            " (Wan2.1 uses 5.0, OSP-Next 7.0)");
}

Schedule wan_unipc_schedule(int steps, double shift) {
  check_schedule_args(steps, shift);
  // Constructor: alphas = linspace(1, 1/1000, 1000) reversed, sigmas = fp32(1 - alphas);
  // sigma_max = sigmas[0] = fp32(1 - 1/1000), sigma_min = sigmas[-1] = fp32(1 - 1) = 0.
  const double sigma_max = double(float(1.0 - 1.0 / 1000.0));
  const double sigma_min = 0.0;
  std::vector<double> s = linspace(sigma_max, sigma_min, steps + 1);
  s.pop_back();
  Schedule out;
  for (double v : s) {
    const double sh = shift_sigma(v, shift);
    out.sigmas.push_back(float(sh));
    out.timesteps.push_back(double(int64_t(sh * 1000.0)));  // truncation toward zero
  }
  out.sigmas.push_back(0.0f);
  return out;
}

Schedule euler_schedule(int steps, double shift) {
  check_schedule_args(steps, shift);
  const std::vector<double> u = linspace(1.0, 0.0, steps + 1);
  Schedule out;
  for (int i = 0; i <= steps; ++i) {
    const double sh = shift_sigma(u[size_t(i)], shift);
    out.sigmas.push_back(float(sh));
    if (i < steps) out.timesteps.push_back(sh * 1000.0);
  }
  return out;
}

}  // namespace osp::sample
